"""The declarative node: an objective, a solver for it, and the backward pass that the solution's
optimality conditions give (design.md section 2).

    y(x) = argmin_u f(x, u)        dL/dx = -grad_x <u, grad_y f(x, y)>,  u = H^-1 dL/dy

A node implements :meth:`DeclarativeNode.solve` (any solver, run without gradients) and
:meth:`DeclarativeNode.objective`; its backward defaults to :func:`implicit_vjp`, the unconstrained
result with the Hessian taken by autograd. Nodes with constraints or a faster structure override
:meth:`DeclarativeNode.vjp` (the Sinkhorn node solves its KKT system through a Schur complement,
the PnP node collapses the dense objective). :func:`declarative` runs a node as a differentiable
function through one generic ``torch.autograd.Function``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class DeclarativeNode:
    """Base class: a batched optimisation problem whose solution is the node's output.

    ``solve(*x)`` returns ``(y, aux, saved)``: the solution ``y`` (a tensor, or a tuple of tensors
    that are all differentiable), non-differentiable diagnostics ``aux`` (a tuple of tensors
    returned after ``y``) and the tensors ``vjp`` needs. ``vjp(saved, grads, needs)`` gets one
    gradient per output of ``y`` and which inputs want a gradient, and returns one per input. The
    default is :func:`implicit_vjp`, for a single ``y`` (B, d), with ``saved = (*x, y)``.
    """

    def solve(self, *x: Tensor) -> tuple[Tensor | tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]:
        raise NotImplementedError

    def objective(self, *x: Tensor, y: Tensor) -> Tensor:
        """Per-sample objective (B,) at ``y``, differentiable in every argument."""
        raise NotImplementedError

    def vjp(
        self, saved: Sequence[Tensor], grads: Sequence[Tensor], needs: Sequence[bool]
    ) -> tuple[Tensor | None, ...]:
        *x, y = saved
        return implicit_vjp(self.objective, x, y, grads[0], needs=needs)


def implicit_vjp(
    objective: Callable[..., Tensor],
    x: Sequence[Tensor],
    y: Tensor,
    grad_y: Tensor,
    hessian: Tensor | None = None,
    needs: Sequence[bool] | None = None,
) -> tuple[Tensor | None, ...]:
    """Gradients of a loss with respect to ``x`` through ``y = argmin_u objective(*x, y=u)``.

    Args:
        objective: ``objective(*x, y=...) -> (B,)``.
        x: the inputs; those that do not require a gradient get None.
        y: (B, d) the solution (a stationary point: the formula assumes it).
        grad_y: (B, d) ``dL/dy``.
        hessian: (B, d, d) of the objective in ``y`` at the solution, or None to take it by autograd.
        needs: which inputs want a gradient (default: those that require one).
    Returns:
        one gradient (or None) per input.
    """
    with torch.enable_grad():
        needs = [xi.requires_grad for xi in x] if needs is None else needs
        leaves = [
            xi.detach().requires_grad_(bool(n) and xi.is_floating_point())
            for xi, n in zip(x, needs, strict=True)
        ]
        yd = y.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(*leaves, y=yd).sum(), yd, create_graph=True)
        if hessian is None:
            rows = [torch.autograd.grad(g[:, k].sum(), yd, retain_graph=True)[0] for k in range(y.shape[1])]
            hessian = torch.stack(rows, dim=1)  # (B, d, d): each sample's objective is its own
        u = torch.linalg.solve(hessian.detach(), grad_y[..., None]).squeeze(-1)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        if not wanted:
            return (None,) * len(x)
        found = torch.autograd.grad(-(g * u).sum(), wanted, allow_unused=True)
    by_id = dict(zip(map(id, wanted), found, strict=True))
    return tuple(by_id.get(id(leaf)) for leaf in leaves)


class _Bridge(torch.autograd.Function):
    """The one autograd glue of every node: ``solve`` forward, the node's ``vjp`` backward
    (first-order: the backward itself is not differentiated)."""

    @staticmethod
    def forward(ctx, node: DeclarativeNode, *x: Tensor):
        y, aux, saved = node.solve(*x)
        ys = y if isinstance(y, tuple) else (y,)
        ctx.node, ctx.num_y = node, len(ys)
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(*aux)
        return (*ys, *aux)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor):
        grads_y = grads[: ctx.num_y]
        return (None, *ctx.node.vjp(ctx.saved_tensors, grads_y, ctx.needs_input_grad[1:]))


def declarative(node: DeclarativeNode, *x: Tensor) -> tuple[Tensor, ...]:
    """``(y, *aux)`` of ``node`` on inputs ``x``, differentiable with respect to ``x`` through ``y``
    (the solver runs inside the Function, where autograd records nothing)."""
    return _Bridge.apply(node, *x)
