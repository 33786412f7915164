"""The whole model's (MACs, bytes, seconds) for any assignment of options to hidden spaces, priced layer by layer:
every producer and consumer gets a kind (plain, lmKAN or removed), a kept fraction of its inputs and a count of
outputs from the options of the spaces it belongs to; lmKAN blocks make the producer an lmKAN and may fold the
consumer away. Also which assignments are consistent and which lmKAN options a plain one dominates."""

from __future__ import annotations

from dataclasses import dataclass

from .costs import lmkan_cost, plain_cost
from .options import BLOCK_KINDS, DAMAGE_TOLERANCE, LMKAN_MARGIN, Option, SpaceOptions, seconds

KINDS = ("macs", "bytes", "latency")


@dataclass
class _Layer:
    """One producer/consumer under an assignment: kind, kept input fraction, output count, grid size."""

    opts: SpaceOptions
    shape: tuple[int, int, int]  # (inputs per position, outputs, positions per sample) of the original layer
    cost: tuple[float, float, float]  # the original layer's (MACs, bytes, seconds)
    kind: str = "plain"  # "plain", "lmkan" or "gone"
    in_fraction: float = 1.0
    out: float = 0.0
    num_grids: int = 0
    placement: str = "none"

    def price(self) -> tuple[float, float, float]:
        """(MACs, bytes, seconds) of the layer as planned."""
        k, out0, positions = self.shape
        if self.kind == "gone":
            return 0.0, 0.0, 0.0
        if self.kind == "plain":
            macs, bytes_ = plain_cost(*self.cost[:2], self.in_fraction, self.out / out0)
            return macs, bytes_, seconds(self.opts, "plain", k * self.in_fraction, self.out, positions)
        n_in, n_out = max(1, round(k * self.in_fraction)), max(1, round(self.out))
        macs, bytes_ = lmkan_cost(positions, n_in, n_out, self.num_grids, self.opts.itemsize)
        return macs, bytes_, seconds(self.opts, "lmkan", n_in, n_out, positions, self.num_grids,
                                     self.placement)


def _base_layers(spaces: list[SpaceOptions]) -> dict[str, _Layer]:
    """Every producer and consumer of the spaces, as in the original."""
    layers: dict[str, _Layer] = {}
    for opts in spaces:
        for name, shape, cost in ((opts.space.producer, opts.producer_shape, opts.producer_cost),
                                  (opts.space.consumer, opts.consumer_shape, opts.consumer_cost)):
            layers.setdefault(name, _Layer(opts, shape, cost, out=shape[1]))
    return layers


def table_latency(spaces: list[SpaceOptions]) -> float:
    """The original's seconds per forward as the per-shape table prices it: the sum over the spaces' layers (the
    rest of the model is never changed, so budgets compare like with like: table estimate against table estimate)."""
    return sum(layer.cost[2] for layer in _base_layers(spaces).values())


def _layers(spaces: list[SpaceOptions], state: list[Option]) -> dict[str, _Layer]:
    """Every producer and consumer of the spaces as planned by `state`."""
    layers = _base_layers(spaces)
    for opts, option in zip(spaces, state):
        a, b = layers[opts.space.producer], layers[opts.space.consumer]
        block = opts.fits.get(option)
        if option.kind in BLOCK_KINDS:
            a.kind, a.num_grids = "lmkan", option.num_grids
            a.placement = block.lmkan.input_norm if block else "quantile"
            if option.upstream:  # fitted on the upstream-narrowed input (consistent() holds the upstream to it)
                a.in_fraction = option.upstream / opts.upstream.size
        if option.kind == "fold":
            b.kind = "gone"
            continue
        a.out, b.in_fraction = option.kept, option.kept / opts.space.size
        if option.kind == "lmkan":
            b.kind, b.num_grids, b.placement = "lmkan", option.num_grids, opts.consumer_placement
    for opts, option in zip(spaces, state):  # a folded block outputs what its consumer kept
        if option.kind == "fold":
            layers[opts.space.producer].out = layers[opts.space.consumer].out
    return layers


def consistent(spaces: list[SpaceOptions], state: list[Option]) -> bool:
    """No layer both the producer of an lmKAN block and a consumer made lmKAN or folded away by another space, and
    every block fitted on an upstream-narrowed input has its upstream space narrowed plainly to exactly that."""
    blocked = {s.space.producer for s, o in zip(spaces, state) if o.kind in BLOCK_KINDS}
    rewritten = {s.space.consumer for s, o in zip(spaces, state) if o.kind in ("lmkan", "fold")}
    feeding = {s.space.consumer: o for s, o in zip(spaces, state)}
    upstream = [feeding.get(s.space.producer) for s, o in zip(spaces, state) if o.upstream]
    needed = [o.upstream for o in state if o.upstream]
    return not blocked & rewritten and all(u is None or (u.kind == "plain" and u.kept == k)
                                           for u, k in zip(upstream, needed))


@dataclass
class CostModel:
    """The whole model's costs for an assignment: the original's, with every producer and consumer re-priced."""

    spaces: list[SpaceOptions]
    original: dict[str, float]  # {"macs": ..., "bytes": ..., "latency": ...} of the whole original model

    def total(self, state: list[Option]) -> dict[str, float]:
        """Whole-model {macs, bytes, latency} under `state` (one option per space)."""
        total = [self.original["macs"], self.original["bytes"], self.original.get("latency", 0.0)]
        for layer in _layers(self.spaces, state).values():
            for i, (new, old) in enumerate(zip(layer.price(), layer.cost)):
                total[i] += new - old
        return dict(zip(KINDS, total))

    def consistent(self, state: list[Option]) -> bool:
        """See consistent()."""
        return consistent(self.spaces, state)


def local_cost(opts: SpaceOptions, option: Option) -> tuple[float, float, float]:
    """(MACs, bytes, seconds) of the space's producer and consumer under `option`, the other spaces kept."""
    cost = CostModel([opts], dict.fromkeys(KINDS, 0.0)).total([option])
    base = [a + b for a, b in zip(opts.producer_cost, opts.consumer_cost)]
    return tuple(c + b for c, b in zip(cost.values(), base))


def drop_dominated(opts: SpaceOptions, options: list[Option]) -> list[Option]:
    """Without the lmKAN options that some plain option beats at no more MACs, bytes and seconds (lmKAN must cut
    the damage by the LMKAN_MARGIN to stay: it does not pay otherwise)."""
    costs = {o: local_cost(opts, o) for o in options}
    plain = [o for o in options if o.kind == "plain"]

    def dominated(o: Option) -> bool:
        return any(LMKAN_MARGIN * opts.damage[p] <= opts.damage[o] + DAMAGE_TOLERANCE
                   and all(a <= b for a, b in zip(costs[p], costs[o])) for p in plain)

    kept = [o for o in options if o.kind == "plain" or not dominated(o)]
    opts.dropped = [o for o in options if o not in kept]
    return kept
