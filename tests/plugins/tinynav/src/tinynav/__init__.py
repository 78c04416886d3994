"""TinyNav, an example vlmppo task plugin: the env (``tinynav.env``), its adapter (``tinynav.adapter``), and
``TASK``, what the package registers as ``TinyNav-v0`` under the ``vlmppo.tasks`` entry-point group."""

from vlmppo.envs import Task

TASK = Task(
    env="tinynav.env:TinyNavEnv",
    adapter="tinynav.adapter:TinyNavAdapter",
    max_episode_steps=12,
    description="Walk to the goal on a 4x4 grid.",
)
