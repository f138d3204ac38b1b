"""autonorm's built-in methods, installed as ``autonorm_plugins``.

Each module registers through the ``autonorm`` entry-point group exactly as a third-party plugin
would; each module's classes are ordinary ``torch.nn`` modules usable without autonorm.
"""
