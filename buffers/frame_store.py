"""Frame-deduplicating storage for frame-stacked image observations (``VecFrameStack``, ``FrameStackObservation``).

A stack of ``k`` frames shares ``k - 1`` frames with the previous observation of its episode, so each env keeps a
circular array of single frames (absolute frame number ``i`` lives in slot ``i % frames_per_env``) and each stored
transition keeps only the absolute number ``a`` of its observation's newest frame:

    observation      = frames a-k+1 .. a
    next_observation = frames a-k+2 .. a+1

At an env's first step, and at the first step after one of its steps was done, all ``k`` frames of the observation
are written (whatever padding the wrapper used: zeros for ``VecFrameStack``, copies of the first frame for
``FrameStackObservation``'s default); then, at every step, the newest frame of ``next_obs``. So the terminal
observation SB3 passes as ``next_obs`` at a done is stored too, and a stack never mixes two episodes. An episode of
``L`` steps costs ``L + k`` frames. A transition can be sampled while all its frames are still stored
(``a - k + 1 >= written - frames_per_env``); the oldest ones of an env lose that when short episodes use up frames
faster than rows, and sampling skips them.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is optional, as in SB3
    psutil = None

_REDRAWS = 32  # rejection rounds in uniform sampling before falling back to the explicit list of valid pairs


def check_buffer_size(buffer_size: int, n_envs: int) -> None:
    """``buffer_size`` and ``n_envs`` are integers >= 1 (SB3 would quietly store 1 row for ``buffer_size=0``)."""
    for name, value in (("buffer_size", buffer_size), ("n_envs", n_envs)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r} ({type(value).__name__})")


def check_rewards(reward: Any) -> None:
    """Raise ``ValueError`` (before anything is stored) if a reward passed to ``add`` is NaN or infinite."""
    reward = np.asarray(reward)
    if reward.dtype.kind in "fc" and not np.isfinite(reward).all():
        envs = np.flatnonzero(~np.isfinite(reward.reshape(-1)))
        raise ValueError(f"reward must be finite, got {reward.reshape(-1)[envs[0]]} for env {int(envs[0])}: add() "
                         "stored nothing; the environment returned it (stable_baselines3's VecCheckNan wrapper "
                         "finds the step)")


def _check_frame_space(space: spaces.Space, frame_stack: int | None,
                       stack_axis: int | None) -> tuple[tuple[int, ...], int, int]:
    """Validate a frame-stack observation space; return (shape, non-negative stack axis, frames per stack)."""
    if not (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3):
        raise ValueError("frame_stack_dedup needs a uint8 Box observation space of 3 dimensions (a stack of image "
                         f"frames, e.g. (4, 84, 84) from VecFrameStack + VecTransposeImage), got {space}")
    shape = tuple(int(n) for n in space.shape)
    if stack_axis is None:
        stack_axis = 0 if int(np.argmin(shape)) == 0 else 2  # SB3's channel-first test: the smallest axis first
    if isinstance(stack_axis, bool) or not isinstance(stack_axis, (int, np.integer)) or not -3 <= stack_axis < 3:
        raise ValueError(f"stack_axis must be one of 0, 1, 2, -1, -2, -3, got {stack_axis!r}")
    axis = int(stack_axis) % 3
    size = shape[axis]
    if size == 1:
        raise ValueError(f"stack axis {axis} of observation shape {shape} has size 1: one frame, nothing to "
                         "deduplicate (frame_stack_dedup is for VecFrameStack / FrameStackObservation stacks)")
    if frame_stack is None:
        frame_stack = size
    if (isinstance(frame_stack, bool) or not isinstance(frame_stack, (int, np.integer)) or frame_stack < 2
            or size % frame_stack):
        raise ValueError(f"frame_stack must be an integer >= 2 dividing the size {size} of stack axis {axis} "
                         f"(observation shape {shape}), got {frame_stack!r}")
    return shape, axis, int(frame_stack)


class FrameStore:
    """Per-env circular arrays of single frames, and per transition the absolute number of its newest frame.

    :param observation_space: the stacked observation space (uint8, 3-D); :param rows: transitions per env;
    :param frame_stack: frames per stack ``k`` (default: the size of the stack axis, one channel per frame);
    :param stack_axis: axis holding the stack (default 0 if it is the smallest axis, as SB3's channel-first
        images, else 2); :param frames_per_env: frame slots per env (default ``rows + rows // 16 + k + 1``).
    """

    def __init__(self, observation_space: spaces.Space, rows: int, n_envs: int, frame_stack: int | None = None,
                 stack_axis: int | None = None, frames_per_env: int | None = None) -> None:
        shape, axis, k = _check_frame_space(observation_space, frame_stack, stack_axis)
        if frames_per_env is None:
            frames_per_env = rows + rows // 16 + k + 1
        if isinstance(frames_per_env, bool) or not isinstance(frames_per_env, (int, np.integer)) or frames_per_env <= k:
            raise ValueError(f"frames_per_env must be an integer > frame_stack={k}, got {frames_per_env!r}")
        self.obs_shape, self.stack_axis, self.frame_stack = shape, axis, k
        channels = shape[axis] // k
        self.frame_shape = shape[:axis] + (channels,) + shape[axis + 1:]
        self._split_shape = shape[:axis] + (k, channels) + shape[axis + 1:]  # stack axis split into (frame, channel)
        self.rows, self.n_envs, self.frames_per_env = rows, n_envs, int(frames_per_env)
        needed = self.frames_per_env * n_envs * int(np.prod(self.frame_shape))
        if psutil is not None and needed > psutil.virtual_memory().available:  # SB3's check, before allocating
            warnings.warn("This system does not have apparently enough memory to store the complete replay buffer "
                          f"frames {needed / 1e9:.2f}GB > {psutil.virtual_memory().available / 1e9:.2f}GB")
        self.frames = np.zeros((self.frames_per_env, n_envs, *self.frame_shape), dtype=np.uint8)
        self.newest = np.zeros((rows, n_envs), dtype=np.int64)  # absolute number of each observation's newest frame
        self._offsets = np.arange(1 - k, 1, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget all transitions (the next ``add`` starts an episode in every env)."""
        self.written = np.zeros(self.n_envs, dtype=np.int64)  # frames written per env so far
        self.continues = np.zeros(self.n_envs, dtype=bool)  # the env's last step was not done
        self.added = 0  # rows added so far
        self.oldest = np.zeros(self.n_envs, dtype=np.int64)  # per env: first absolute row that may still be valid
        self.invalidated = np.empty(0, dtype=np.int64)  # flat indices row * n_envs + env that the last add made stale

    # Pickle only the frame slots and rows written so far: a checkpoint early in a run costs the fill, not the
    # capacity. Slot i of every env is unwritten while i >= written (the store fills slots 0, 1, ... before it wraps).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["frames"] = self.frames[: min(int(self.written.max(initial=0)), self.frames_per_env)]
        state["newest"] = self.newest[: min(self.added, self.rows)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        full = {"frames": (state["frames_per_env"], state["n_envs"], *state["frame_shape"]),
                "newest": (state["rows"], state["n_envs"])}
        for name, shape in full.items():  # a full array (all written, or pickled before this layout) is kept as is
            if state[name].shape != shape:
                array = np.zeros(shape, dtype=state[name].dtype)
                array[: len(state[name])] = state[name]
                state[name] = array
        self.__dict__.update(state)

    @property
    def nbytes(self) -> int:
        """Bytes held by the frame and index arrays."""
        return self.frames.nbytes + self.newest.nbytes

    def _frames_of(self, stacks: np.ndarray, name: str) -> np.ndarray:
        stacks = np.asarray(stacks)
        if stacks.shape != (self.n_envs, *self.obs_shape):
            raise ValueError(f"{name} must have shape {(self.n_envs, *self.obs_shape)} (n_envs, *observation shape), "
                             f"got {stacks.shape}")
        return stacks.reshape(self.n_envs, *self._split_shape)  # axis stack_axis + 1 indexes the frames

    def _at(self, index: int | slice) -> tuple[Any, ...]:
        return (slice(None),) * (self.stack_axis + 1) + (index,)

    def add(self, pos: int, obs: np.ndarray, next_obs: np.ndarray, done: np.ndarray) -> None:
        """Store one step of every env at row ``pos``; checks the stacks first and writes nothing if one is wrong.

        Checks (about ``k`` frame comparisons per env): ``next_obs`` is ``obs`` moved on by one frame, and where
        the env's previous step was not done, the newest frame of ``obs`` is the stored newest frame of the
        previous ``next_obs``.
        """
        o, n = self._frames_of(obs, "obs"), self._frames_of(next_obs, "next_obs")
        done = np.asarray(done).reshape(self.n_envs).astype(bool)
        k, slots = self.frame_stack, self.frames_per_env
        shifted = (n[self._at(slice(0, k - 1))] == o[self._at(slice(1, k))]).reshape(self.n_envs, -1).all(axis=1)
        if not shifted.all():
            raise ValueError(f"next_obs of env {int(np.argmin(shifted))} is not obs moved on by one frame along "
                             f"stack_axis={self.stack_axis} (frame_stack={k}): frame_stack_dedup needs observations "
                             "stacked by VecFrameStack or FrameStackObservation (for frames of several channels, "
                             "give frame_stack as the number of frames)")
        newest_obs = o[self._at(k - 1)]
        cont = np.flatnonzero(self.continues)
        if cont.size:
            stored = self.frames[(self.written[cont] - 1) % slots, cont]
            same = (stored == newest_obs[cont]).reshape(cont.size, -1).all(axis=1)
            if not same.all():
                raise ValueError(f"obs of env {int(cont[np.argmin(same)])} does not continue the previous step's "
                                 "next_obs, although that step was not done: pass done=True at every episode end")
        start = np.flatnonzero(~self.continues)
        if start.size:  # first step of an episode: all k frames of obs
            first = (self.written[start, None] + np.arange(k)) % slots
            self.frames[first, start[:, None]] = np.moveaxis(o[start], self.stack_axis + 1, 1)
            self.written[start] += k
        self.newest[pos] = self.written - 1
        self.frames[self.written % slots, np.arange(self.n_envs)] = n[self._at(k - 1)]
        self.written += 1
        self.continues = ~done
        self.added += 1
        self._expire()

    def _expire(self) -> None:
        # Walk each env's oldest rows forward while their first frame has been overwritten (amortised O(1)).
        limit = self.written - self.frames_per_env + self.frame_stack - 1  # valid iff newest >= limit
        stale = []
        for e in range(self.n_envs):
            r = max(int(self.oldest[e]), self.added - self.rows)
            while r < self.added and self.newest[r % self.rows, e] < limit[e]:
                stale.append((r % self.rows) * self.n_envs + e)
                r += 1
            self.oldest[e] = r
        self.invalidated = np.array(stale, dtype=np.int64)

    def valid(self, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """Whether every frame of transitions ``(rows, envs)`` is still stored."""
        return self.newest[rows, envs] >= self.written[envs] - self.frames_per_env + self.frame_stack - 1

    def _stacks(self, newest: np.ndarray, envs: np.ndarray) -> np.ndarray:
        gathered = self.frames[(newest[:, None] + self._offsets) % self.frames_per_env, envs[:, None]]
        if self.stack_axis:  # (batch, k, *frame_shape) -> frames side by side along the stack axis
            gathered = np.moveaxis(gathered, 1, self.stack_axis + 1)
        return gathered.reshape(len(newest), *self.obs_shape)

    def gather(self, rows: np.ndarray, envs: np.ndarray, last_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rebuild the observations of ``(rows, envs)`` and the next observations of ``(last_rows, envs)``."""
        return self._stacks(self.newest[rows, envs], envs), self._stacks(self.newest[last_rows, envs] + 1, envs)


class FrameStackReplayBuffer(ReplayBuffer):
    """SB3 ``ReplayBuffer`` (uniform, 1-step) that stores each frame of stacked image observations once.

    Use it with any SB3 off-policy algorithm on ``VecFrameStack`` (or ``FrameStackObservation``) image envs::

        DQN("CnnPolicy", env, replay_buffer_class=FrameStackReplayBuffer,
            replay_buffer_kwargs=dict(frame_stack=4))

    :param frame_stack_dedup: store frames once (``False``: exactly SB3's ``ReplayBuffer``);
    :param frame_stack: frames per stack (default: the size of the stack axis, i.e. one channel per frame; give it
        for RGB stacks, e.g. 4 for 12 channels); :param stack_axis: the axis holding the stack, default 0 when it is
        the smallest (channel-first, as SB3's ``VecTransposeImage`` gives) else 2 (channel-last, e.g. MinAtar);
    :param frames_per_env: frame slots per env, default ``rows + rows // 16 + frame_stack + 1`` (rows =
        ``buffer_size // n_envs``): nothing is lost while episodes average ``16 * frame_stack`` steps or more;
        with shorter ones the oldest transitions of an env lose their frames and are not sampled.
    Observations must be 3-D uint8 frame stacks; ``add`` raises ``ValueError`` (storing nothing) if ``next_obs`` is
    not ``obs`` moved on by one frame, or if ``obs`` does not continue the previous step where that was not done.
    ``optimize_memory_usage`` must be ``False`` (each frame is already stored once). Memory per transition for
    84x84x4 uint8: about 7.5 KB against SB3's 28 KB with ``optimize_memory_usage``.
    """

    frames: FrameStore | None = None  # None: frame_stack_dedup=False (plain ReplayBuffer storage, never set)

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        frame_stack_dedup: bool = True,
        frame_stack: int | None = None,
        stack_axis: int | None = None,
        frames_per_env: int | None = None,
    ) -> None:
        check_buffer_size(buffer_size, n_envs)
        if not isinstance(frame_stack_dedup, bool):
            raise ValueError(f"frame_stack_dedup must be True or False, got {frame_stack_dedup!r}")
        if not frame_stack_dedup:
            if (frame_stack, stack_axis, frames_per_env) != (None, None, None):
                raise ValueError("frame_stack, stack_axis and frames_per_env need frame_stack_dedup=True")
            super().__init__(buffer_size, observation_space, action_space, device, n_envs,
                             optimize_memory_usage, handle_timeout_termination)
            return
        if optimize_memory_usage:
            raise ValueError("optimize_memory_usage must be False with frame_stack_dedup=True "
                             "(each frame is already stored once)")
        rows = max(buffer_size // n_envs, 1)
        frames = FrameStore(observation_space, rows, n_envs, frame_stack, stack_axis, frames_per_env)
        # SB3's ReplayBuffer.__init__ without its observation arrays (and their memory check).
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size, self.frames = rows, frames
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.actions = np.zeros((rows, n_envs, self.action_dim), dtype=self._maybe_cast_dtype(action_space.dtype))
        self.rewards = np.zeros((rows, n_envs), dtype=np.float32)
        self.dones = np.zeros((rows, n_envs), dtype=np.float32)
        self.timeouts = np.zeros((rows, n_envs), dtype=np.float32)

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Store one step of every env (SB3 semantics); a NaN or infinite reward, and with frame dedup a bad stack,
        raise ``ValueError`` and store nothing."""
        check_rewards(reward)
        if self.frames is None:
            super().add(obs, next_obs, action, reward, done, infos)
            return
        action = np.asarray(action).reshape((self.n_envs, self.action_dim))
        reward = np.asarray(reward, dtype=np.float32).reshape(self.n_envs)
        done = np.asarray(done, dtype=np.float32).reshape(self.n_envs)
        timeouts = np.array([info.get("TimeLimit.truncated", False) for info in infos], dtype=np.float32)
        self.frames.add(self.pos, obs, next_obs, done)
        self.actions[self.pos], self.rewards[self.pos], self.dones[self.pos] = action, reward, done
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = timeouts
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full, self.pos = True, 0

    def reset(self) -> None:
        """Empty the buffer."""
        super().reset()
        if self.frames is not None:
            self.frames.reset()

    def _observation_pair(self, rows: np.ndarray, envs: np.ndarray,
                          last_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Observations of ``(rows, envs)`` and next observations of ``(last_rows, envs)``, as new arrays."""
        if self.frames is not None:
            return self.frames.gather(rows, envs, last_rows)
        if self.optimize_memory_usage:
            return self.observations[rows, envs], self.observations[(last_rows + 1) % self.buffer_size, envs]
        return self.observations[rows, envs], self.next_observations[last_rows, envs]

    def _draw_valid(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Uniform ``(rows, envs)`` over the transitions whose frames are all stored (rejection, then a list)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        size = self.size()
        if size == 0:
            raise ValueError(f"cannot sample from an empty {type(self).__name__}")
        assert self.frames is not None
        rows = np.random.randint(0, size, size=batch_size)
        envs = np.random.randint(0, self.n_envs, size=batch_size)
        bad = np.flatnonzero(~self.frames.valid(rows, envs))
        for _ in range(_REDRAWS):
            if not bad.size:
                return rows, envs
            rows[bad] = np.random.randint(0, size, size=bad.size)
            envs[bad] = np.random.randint(0, self.n_envs, size=bad.size)
            bad = bad[~self.frames.valid(rows[bad], envs[bad])]
        all_rows, all_envs = np.divmod(np.arange(size * self.n_envs), self.n_envs)
        valid = np.flatnonzero(self.frames.valid(all_rows, all_envs))
        rows[bad], envs[bad] = np.divmod(valid[np.random.randint(0, valid.size, size=bad.size)], self.n_envs)
        return rows, envs

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """Uniform sample (as SB3); with frame dedup only transitions whose frames are all stored are drawn."""
        if self.frames is None:
            return super().sample(batch_size, env=env)
        rows, envs = self._draw_valid(batch_size)
        return self._samples_at(rows, envs, env)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        if self.frames is None:
            return super()._get_samples(batch_inds, env=env)
        envs = np.random.randint(0, self.n_envs, size=len(batch_inds))
        if not self.frames.valid(batch_inds, envs).all():
            raise ValueError("batch_inds include transitions whose frames were overwritten (use sample())")
        return self._samples_at(batch_inds, envs, env)

    def _samples_at(self, rows: np.ndarray, envs: np.ndarray, env: VecNormalize | None) -> ReplayBufferSamples:
        obs, next_obs = self._observation_pair(rows, envs, rows)
        dones = (self.dones[rows, envs] * (1 - self.timeouts[rows, envs])).reshape(-1, 1)
        rewards = self._normalize_reward(self.rewards[rows, envs].reshape(-1, 1), env)
        data = (self._normalize_obs(obs, env), self.actions[rows, envs], self._normalize_obs(next_obs, env),
                dones, rewards)
        return ReplayBufferSamples(*(self.to_torch(a, copy=False) for a in data))  # all are new arrays
