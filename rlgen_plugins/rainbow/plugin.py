"""Built-in plugin ``rlgen-rainbow``: the Rainbow algorithm, its policies and the prioritised replay buffers.

Components are registered as import paths, so listing them never imports torch.
"""
from registry import Register, hookimpl


@hookimpl
def register_algorithms(register: Register) -> None:
    register("rainbow", "rlgen_plugins.rainbow.algorithm:Rainbow")


@hookimpl
def register_policies(register: Register) -> None:
    register("RainbowPolicy", "policies:RainbowPolicy")
    register("RainbowCnnPolicy", "policies:RainbowCnnPolicy")
    register("RainbowMultiInputPolicy", "policies:RainbowMultiInputPolicy")


@hookimpl
def register_buffers(register: Register) -> None:
    register("PrioritizedReplayBuffer", "buffers:PrioritizedReplayBuffer")
    register("DictPrioritizedReplayBuffer", "buffers:DictPrioritizedReplayBuffer")
