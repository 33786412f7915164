"""The planner's "lmKAN block" candidate: a hidden space's producer A and its per-unit ops become one LMKANLinear
(A's inputs -> h outputs, no activation after it) and the consumer B a Linear h -> B's outputs, both fitted in
closed form on calibration rows. The lmKAN targets the top-h principal components of B's centred original output
(or that output itself when h reaches B's out features: B is then folded away), its tables placed by A's input
quantiles (bounded beyond the data) and fitted with fit_tables_each, the Hessian weight picked on held-out rows; B' is
the least-squares map from the fitted components back to B's output. lmKAN's 2-D functions then act on A's raw
inputs, where they can pay. Where the original block is at hand (A's inputs not narrowed upstream), the fit also sees
rows beyond the data: the most extreme fit rows pushed further out from the mean, labelled by the original block, so
the tables extrapolate as the block does (heavy-tailed inputs otherwise meet tables fitted on the bulk only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx, nn

from lmkan_surgery.nn import LMKANLinear
from lmkan_surgery.passes.fit import fit_tables_each
from lmkan_surgery.passes.shrink import HiddenSpace
from lmkan_surgery.passes.trace import TraceResult
from lmkan_surgery.passes.replace import set_module

HESSIANS = (1e-5, 1e-3, 1e-1)  # relative Hessian weights tried; the held-out damage picks one per width
TABLE_RIDGE = 1e-5  # relative ridge towards a zero table (identifies empty cells together with the Hessian term)
LINEAR_RIDGE = 1e-8  # relative ridge of the B' least squares
TAIL_SHARE = 0.1  # share of the fit rows (the most extreme) pushed beyond the data for the fit
TAIL_SCALES = (1.5, 2.5)  # how far out from the mean those rows are pushed, labelled by the original block
MAX_BLOCK_UNKNOWNS = 6_143  # pairs x (G+1)^2 above this (6,144 with the bias): fit_tables goes to CG, too slow here

AFFINE = (nn.Identity, nn.Dropout, nn.BatchNorm1d)  # per-unit ops that are affine in eval mode
Rows = list[torch.Tensor]
BlockFn = Callable[[torch.Tensor], torch.Tensor]


def _module_nodes(trace: TraceResult, space: HiddenSpace) -> list[fx.Node] | None:
    """The graph nodes from the producer's call to the consumer's (both included), or None if not found."""
    for part in trace.parts:
        prefix = f"{part.prefix}." if part.prefix else ""
        for node in part.graph.nodes:
            if node.op == "call_module" and f"{prefix}{node.target}" == space.producer:
                path = [node]
                while len(path[-1].users) == 1:
                    path.append(next(iter(path[-1].users)))
                    if path[-1].op == "call_module" and f"{prefix}{path[-1].target}" == space.consumer:
                        return path
                return None
    return None


def block_not_tried(model: nn.Module, trace: TraceResult, space: HiddenSpace, allowed: set[str],
                    num_grids: tuple[int, ...], narrowest: int | None = None) -> str:
    """Why the lmKAN block cannot replace this space's producer, ops and consumer ("" when it can); narrowest: the
    fewest producer inputs an upstream space can narrow it to (blocks too wide at full input are fitted there)."""
    producer, consumer = model.get_submodule(space.producer), model.get_submodule(space.consumer)
    if type(producer) is not nn.Linear or type(consumer) is not nn.Linear:
        return f"producer and consumer must be nn.Linear (found {type(producer).__name__}, " \
               f"{type(consumer).__name__})"
    if space.producer not in allowed or space.consumer not in allowed:
        return "its producer or consumer is excluded from conversion"
    path = _module_nodes(trace, space)
    if path is None:
        return "the chain between producer and consumer was not found in the traced graph"
    functional = [str(n.target) for n in path[1:-1] if n.op != "call_module"]
    if functional:
        return f"the chain holds functional ops ({', '.join(functional)}), which cannot be replaced by nn.Identity"
    if all(isinstance(model.get_submodule(name), AFFINE) for name in space.chain):
        return "the chain is affine (no nonlinearity between the two Linear layers): nothing for lmKAN to replace"
    pairs = (min(producer.in_features, narrowest or producer.in_features) + 1) // 2
    if pairs * (min(num_grids) + 1) ** 2 > MAX_BLOCK_UNKNOWNS:
        return f"its table fit ({pairs} input pairs x (G+1)^2 > {MAX_BLOCK_UNKNOWNS:,} unknowns) is too large " \
               f"for a calibration-time fit" + (", even on the narrowest upstream input" if narrowest else "")
    return ""


@dataclass
class BlockFit:
    """A fitted block: the lmKAN (A's inputs -> h), B' (None when folded) and the held-out damage."""

    lmkan: LMKANLinear
    linear: nn.Linear | None
    damage: float


def _rel(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).norm() / target.norm().clamp_min(1e-30))


def _lstsq(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ridge least squares [z, 1] @ W ~ y (float64); returns W [h + 1, out]."""
    design = torch.cat([z, z.new_ones(len(z), 1)], dim=1)
    gram = design.t() @ design
    damping = LINEAR_RIDGE * float(gram.diagonal().mean()) + 1e-12
    return torch.linalg.solve(gram + damping * torch.eye(len(gram), dtype=gram.dtype), design.t() @ y)


def _sliced(layer: LMKANLinear, columns: slice) -> LMKANLinear:
    """A copy of `layer` (its placement included) restricted to the given output columns."""
    state = layer.state_dict()
    state["table"], state["bias"] = state["table"][..., columns], state["bias"][columns]
    out = LMKANLinear(layer.in_features, len(state["bias"]), layer.num_grids, input_norm=layer.input_norm)
    out.load_state_dict(state)
    return out.eval()


def _placed(x: torch.Tensor, n_out: int, num_grids: int, mix: float) -> LMKANLinear:
    """An empty-table lmKAN x.shape[1] -> n_out whose quantile input placement is calibrated on x (bounded beyond
    the calibrated range: an affine placement extrapolates the tables linearly, and rows the calibration did not
    cover then blow up -- measured on the heavy-tailed methane teacher, docs/benchmarks.md)."""
    layer = LMKANLinear(x.shape[1], n_out, num_grids, input_norm="quantile").eval()
    layer.calibrate_placement(x, mix)
    with torch.no_grad():
        layer.table.zero_()
    return layer


def original_block(model: nn.Module, space: HiddenSpace, out_idx: torch.Tensor | None = None) -> BlockFn:
    """The block A -> per-unit ops -> B of `model` as one function of A's inputs (B's outputs restricted to out_idx
    when B's outputs are narrowed downstream and B itself is not yet)."""
    modules = [model.get_submodule(n) for n in (space.producer, *space.chain, space.consumer)]

    @torch.no_grad()
    def block(x: torch.Tensor) -> torch.Tensor:
        for module in modules:
            x = module(x)
        return x[:, out_idx] if out_idx is not None and x.shape[1] != len(out_idx) else x

    return block


def beyond_the_data(x: torch.Tensor, y: torch.Tensor, block: BlockFn) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y and TAIL_SHARE of the rows (those with the largest standardised feature) pushed out from the mean by each
    of TAIL_SCALES, labelled by the original block."""
    mean = x.mean(0)
    extreme = ((x - mean) / x.std(0).clamp_min(1e-12)).abs().amax(1)
    tail = x[torch.argsort(extreme, stable=True)[len(x) - int(len(x) * TAIL_SHARE):]]
    pushed = torch.cat([mean + scale * (tail - mean) for scale in TAIL_SCALES])
    labels = block(pushed.to(torch.float32)).to(y.dtype)
    return torch.cat([x, pushed]), torch.cat([y, labels])


def fit_blocks(x_train: Rows, y_train: Rows, x_held: Rows, y_held: Rows, widths: list[int], num_grids: int,
               mix: float, block: BlockFn | None = None) -> dict[int, BlockFit]:
    """Fitted blocks for every width h in `widths` (h >= out features: folded, the lmKAN maps to B's output).

    x_*: A's inputs per batch, y_*: B's original outputs per batch; block: the original block (original_block), to
    fit beyond the data too (beyond_the_data), None where A's inputs are narrowed. One table fit per Hessian weight
    serves every width (the output columns share the normal matrix); per width the weight with the lowest held-out
    damage is kept."""
    xt, yt = torch.cat(x_train).double(), torch.cat(y_train).double()
    if block is not None and len(xt) > 1:
        xt, yt = beyond_the_data(xt, yt, block)
    xh, yh = torch.cat(x_held).double(), torch.cat(y_held).double()
    n_out = yt.shape[1]
    mean = yt.mean(0)
    thin = sorted({h for h in widths if h < n_out})
    basis = torch.linalg.svd(yt - mean, full_matrices=False).Vh[:max(thin, default=0)].t()
    targets = torch.cat([(yt - mean) @ basis, yt], dim=1)
    best: dict[int, BlockFit] = {}
    placed = _placed(xt.float(), targets.shape[1], num_grids, mix)
    for layer, _ in fit_tables_each(placed, xt.float(), targets.float(), HESSIANS, ridge=TABLE_RIDGE, relative=True):
        with torch.no_grad():
            zt, zh = layer(xt.float()).double(), layer(xh.float()).double()
        for h in widths:
            if h >= n_out:
                fit = BlockFit(_sliced(layer, slice(basis.shape[1], None)), None,
                               _rel(zh[:, basis.shape[1]:], yh))
            else:
                weights = _lstsq(zt[:, :h], yt)
                linear = nn.Linear(h, n_out)
                with torch.no_grad():
                    linear.weight.copy_(weights[:-1].t())
                    linear.bias.copy_(weights[-1])
                damage = _rel(torch.cat([zh[:, :h], zh.new_ones(len(zh), 1)], dim=1) @ weights, yh)
                fit = BlockFit(_sliced(layer, slice(0, h)), linear.eval(), damage)
            if h not in best or fit.damage < best[h].damage:
                best[h] = fit
    return best


def install_block(model: nn.Module, space: HiddenSpace, fit: BlockFit) -> list[str]:
    """Put a fitted block into `model`: A -> the lmKAN, the chain's modules -> nn.Identity, B -> B' (or
    nn.Identity when folded); returns the replaced module names."""
    set_module(model, space.producer, fit.lmkan)
    for name in space.chain:
        set_module(model, name, nn.Identity())
    set_module(model, space.consumer, fit.linear if fit.linear is not None else nn.Identity())
    return [space.producer, *space.chain, space.consumer]
