"""vlmppo: fine-tune vision-language models as decision-making agents.

The engine is importable without the CLI: ``vlmppo.config.load_config``, ``vlmppo.models.load_model``,
``vlmppo.envs.make_vec_env`` and the stage functions each command calls.
"""

__version__ = "0.1.0"
