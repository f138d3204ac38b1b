"""A trial's resolved configuration: every choice made, as plain data.

It is what a study stores per trial, what ``autonorm best`` writes and what
:func:`autonorm.build_model` builds from, so it carries the input shape and class count too.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autonorm.errors import SpecError, first_problem
from autonorm.yamlfile import placed, read_yaml


class ComponentChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = {}


class TrialConfig(BaseModel):
    """Everything needed to rebuild and retrain one trial."""

    model_config = ConfigDict(extra="forbid")
    dataset: ComponentChoice
    val_fraction: float = Field(ge=0, lt=1)
    test_fraction: float = Field(ge=0, lt=1)
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] = Field(min_length=2, max_length=3)
    num_classes: int = Field(ge=2)
    model: ComponentChoice
    #: chosen component per kind (normalization, activation, pooling, head, initializer); a kind
    #: excluded by another choice (FRN brings its own activation) is absent.
    components: dict[str, ComponentChoice]
    epochs: int
    train: dict[str, Any]
    seed: int = Field(0, ge=0, lt=2**32)
    #: seed of the train/validation/test split (the search's ``search.seed``), so the test split stays held out
    data_seed: int = Field(0, ge=0, lt=2**32)

    @field_validator("train")
    @classmethod
    def _decayed_everything_before(cls, train: dict[str, Any]) -> dict[str, Any]:
        """A configuration written before ``weight_decay_on`` existed was trained with weight decay on
        every parameter; it keeps meaning that (retrained by ``autonorm train``, shown by ``best``)."""
        if "weight_decay" in train and "weight_decay_on" not in train:
            return {**train, "weight_decay_on": "all"}
        return train

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def load(cls, source: str | os.PathLike | dict[str, Any]) -> TrialConfig:
        """From a mapping or a YAML file written by ``autonorm best``."""
        file = None
        if not isinstance(source, (dict, str, os.PathLike)):
            hint = " (a trial's is its .config)" if isinstance(getattr(source, "config", None), TrialConfig) else ""
            expected = f"a TrialConfig, its dict or a YAML file's path{hint}"
            raise TypeError(f"expected {expected}, got {type(source).__name__}")
        if not isinstance(source, dict):
            file = str(source)
            source, _ = read_yaml(source, "configuration")
        if isinstance(source, dict) and {"space", "search"} & set(source) and "components" not in source:
            raise SpecError(
                "is a search space, not a configuration: search it, then export its best configuration with "
                "`autonorm best STUDY -o best.yaml` (or a trial's with --trial N)",
                file=file,
            )
        try:
            return cls.model_validate(source)
        except ValidationError as exc:
            where, message = first_problem(exc, cls)
            raise placed(SpecError(message, path=".".join(map(str, where))), file) from None

    def summary(self) -> str:
        """The chosen names, model first, then one per kind in order: ``resnet | batchnorm | relu | avg |
        strided_conv | linear | kaiming | none | none`` (the last two: augmentation and training method)."""
        return " | ".join([self.model.name, *(c.name for c in self.components.values())])
