"""Training steps captured as CUDA graphs: on a GPU, launching the ~100 small kernels of one step of
these small networks costs more than running them, so forward, backward and optimizer update are
recorded once and replayed as one launch (PyTorch's "whole network capture").

Lightning still drives the run: the modules switch to manual optimization and hand Lightning's
optimizer a closure that replays the graph; the update happens inside the graph, so the gradients
are left unset and Lightning's own `optimizer.step` finds nothing more to do, while counting the step.
"""

import inspect
import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

log = logging.getLogger("deep_clustering")


def possible(device: torch.device, precision: str, in_memory: bool) -> bool:
    """Whether the training steps can be captured here: a CUDA GPU (one a process under DDP), 32-bit
    or bfloat16 precision (Lightning's autocast keeps no cache of cast weights, which capture would
    freeze; 16-mixed's gradient scaler checks for inf on the host at every step), data held in
    memory (a DataLoader's workers would need their own handling)."""
    return device.type == "cuda" and str(precision).startswith(("32", "bf16")) and in_memory


def capturable(optimizer: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer factory with `capturable=True` where its class has that option (Adam, AdamW...):
    its step counters then live on the GPU, as capture requires."""
    cls = optimizer.func if isinstance(optimizer, partial) else optimizer
    if "capturable" in inspect.signature(cls).parameters:
        return partial(optimizer, capturable=True)
    return optimizer


class CapturedStep:
    """`loss_fn(*inputs)`, its backward and `optimizer.step()`, as one CUDA graph after `warmup` eager steps.

    `loss_fn` returns a tuple of losses; the first is the one minimised, the others are for the logs.
    Every call is one real training step on its inputs, which are copied into the graph's fixed
    buffers; inputs of another shape (an epoch's last, smaller batch) take an eager step, and so
    does every call when `capture` is false (a CPU: the same steps, uncaptured). Returns the losses,
    detached (copies: the graph overwrites its own). The gradients are left unset after each call. The
    parameters and the optimizer state must keep their storage (Lightning loads checkpoints in place).

    Under DDP (a process group) the step averages the gradients over the processes itself, with one
    all-reduce between backward and update, captured with the rest (NCCL collectives can be).
    Lightning's DDP wrapper stays idle, as under manual optimization without `manual_backward`. Every
    process must take the same steps on inputs of the same shapes, as their samplers give them: a
    captured collective must be captured, and replayed, by all processes together.
    """

    def __init__(
        self,
        loss_fn: Callable[..., tuple[Tensor, ...]],
        optimizer: torch.optim.Optimizer,
        capture: bool,
        warmup: int = 3,
    ) -> None:
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.capture, self.warmup = capture, warmup
        under_ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world = torch.distributed.get_world_size() if under_ddp else None  # None: no process group
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[Tensor] = []
        self.losses: tuple[Tensor, ...] = ()
        self.eager_steps = 0

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if self.graph is not None and [x.shape for x in inputs] == [x.shape for x in self.inputs]:
            for buffer, x in zip(self.inputs, inputs):
                buffer.copy_(x)
            self.graph.replay()
            return tuple(loss.detach().clone() for loss in self.losses)
        if self.capture and self.graph is None and self.eager_steps >= self.warmup:
            try:
                return self._capture(inputs)
            except RuntimeError as e:  # something in the step cannot be captured: go on without graphs
                log.warning("CUDA graph capture failed, training goes on with eager steps (cuda_graphs=false): %s", e)
                self.capture, self.graph, self.inputs, self.losses = False, None, [], ()
                torch.cuda.synchronize()
        if self.capture and self.graph is None:  # warm-up for capture runs on a side stream
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                losses = self._eager(inputs)
            torch.cuda.current_stream().wait_stream(stream)
            return losses
        return self._eager(inputs)

    def _eager(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.loss_fn(*inputs)
        self._update(losses[0])
        self.optimizer.zero_grad(set_to_none=True)
        self.eager_steps += 1
        return tuple(loss.detach() for loss in losses)

    def _update(self, loss: Tensor) -> None:
        """Backward, the gradients' mean over the processes under DDP, and the optimizer's update;
        outside autocast (as Lightning's own backward: on a CPU, backward runs on this thread and
        under mixed precision would otherwise cast its products too)."""
        with torch.autocast(loss.device.type, enabled=False):
            loss.backward()
            self._average_gradients()
            self.optimizer.step()

    def _average_gradients(self) -> None:
        """Under DDP, every gradient becomes its mean over the processes, as with DDP's own reducer:
        one all-reduce (a sum) of all of them in one flat buffer, divided by the process count."""
        if self.world is None:
            return
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(mean.view_as(g))

    def _capture(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.inputs = [x.detach().clone() for x in inputs]
        self.optimizer.zero_grad(set_to_none=True)  # the gradients are allocated inside the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.losses = self.loss_fn(*self.inputs)
            self._update(self.losses[0])
        self.optimizer.zero_grad(set_to_none=True)  # the graph keeps its gradients' memory
        self.graph = graph
        graph.replay()  # capture only recorded the step: this runs it
        return tuple(loss.detach().clone() for loss in self.losses)


def replayed(module) -> bool:
    """Whether a module's training steps were replayed from a captured CUDA graph."""
    return module.captured is not None and module.captured.graph is not None


def step(module, loss_fn: Callable[..., tuple[Tensor, ...]], *inputs: Tensor) -> tuple[Tensor, ...]:
    """One training step of a LightningModule under manual optimization, through its CapturedStep
    (made on the first call; captured on a GPU). Lightning's optimizer.step counts the step and
    runs its hooks; the update itself happened in the closure, so it finds no gradients to apply.
    `module` has an attribute `captured` (None at first). Returns the losses."""
    optimizer = module.optimizers()
    if module.captured is None:
        module.captured = CapturedStep(loss_fn, optimizer.optimizer, capture=module.device.type == "cuda")
    return optimizer.step(closure=lambda: module.captured(*inputs))
