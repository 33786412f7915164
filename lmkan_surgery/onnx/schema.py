"""The ONNX form of the lmKAN op: ``lmkan.LMKAN2D`` (schema, exporter translation) and its standard-op function body.

``Y = lmkan.LMKAN2D(X, table)`` with attribute ``num_grids`` (G):

- ``X [B, 2P]``: pair p reads ``X[b, 2p]`` (first table axis) and ``X[b, 2p+1]`` (second table axis);
- ``table [P, G+1, G+1, N_out]``: the canonical lmKAN layout (see ``lmkan_surgery/ops/reference.py``), an
  initializer of the model;
- ``Y [B, N_out]``: ``Y[b, o] = sum_p f_{o,p}(X[b, 2p], X[b, 2p+1])`` with bilinear lookup on the Laplace-CDF grid
  (cell = clamp(floor(sigma(x) G), 0, G-1), unclamped local coordinate t, cancellation-free evaluation).

The function body attached to exported models computes the same math with standard ONNX ops (opset >= 15), so any
ONNX runtime can run the file; a native kernel registered for the op (kernels/ort/) replaces it in onnxruntime.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper
from onnx.defs import OpSchema

DOMAIN = "lmkan"
DOMAIN_VERSION = 1
OP_TYPE = "LMKAN2D"
ATTR_NUM_GRIDS = "num_grids"
MIN_BODY_OPSET = 15  # CastLike

_INT64_MAX = 2**63 - 1


def op_schema() -> OpSchema:
    """The explicit schema of lmkan.LMKAN2D (what the torch.export-based exporter needs for a custom domain)."""
    param = OpSchema.FormalParameter
    return OpSchema(
        OP_TYPE,
        DOMAIN,
        DOMAIN_VERSION,
        doc="lmKAN 2-D lookup: Y[b, o] = sum_p f_{o,p}(X[b, 2p], X[b, 2p+1]); table [P, G+1, G+1, N_out].",
        inputs=[param("X", "T", "input [B, 2P]"), param("table", "T", "lookup table [P, G+1, G+1, N_out]")],
        outputs=[param("Y", "T", "output [B, N_out]")],
        type_constraints=[("T", ["tensor(float)", "tensor(double)"], "float32 or float64")],
        attributes=[OpSchema.Attribute(ATTR_NUM_GRIDS, OpSchema.AttrType.INT, "number of grid intervals G")],
    )


def onnxscript_op():
    """An onnxscript op for lmkan.LMKAN2D built from the explicit schema."""
    import onnxscript

    return onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION), OP_TYPE, op_schema())


def dynamo_translation_table() -> dict:
    """custom_translation_table for torch.onnx.export(dynamo=True): lmkan::lookup2d -> one lmkan.LMKAN2D node."""
    import torch

    op = onnxscript_op()

    def lookup2d(x, table):
        return op(x, table, num_grids=int(table.shape[1]) - 1)

    return {torch.ops.lmkan.lookup2d.default: lookup2d}


def _const(name: str, value, dtype: int = TensorProto.INT64) -> onnx.NodeProto:
    """A Constant node holding `value` (a scalar or a list) of `dtype`."""
    dims = [] if not isinstance(value, list) else [len(value)]
    vals = value if isinstance(value, list) else [value]
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, vals))


def _grid_nodes() -> list[onnx.NodeProto]:
    """Nodes -> `nodes` [G+1] and `inv_len` [G] in X's dtype, computed in double as lmkan_surgery/grid.py does."""
    num_grids = helper.make_node("Constant", [], ["G"])
    num_grids.attribute.append(_attr_ref())
    n = helper.make_node
    return [
        num_grids,
        _const("i0", 0), _const("i1", 1), _const("i2", 2), _const("im1", -1), _const("im2", -2),
        _const("i0v", [0]), _const("i1v", [1]), _const("i2v", [2]), _const("im1v", [-1]), _const("im2v", [-2]),
        _const("imaxv", [_INT64_MAX]),
        _const("d_half", 0.5, TensorProto.DOUBLE), _const("d_one", 1.0, TensorProto.DOUBLE),
        _const("d_two", 2.0, TensorProto.DOUBLE),
        n("Cast", ["G"], ["Gd"], to=TensorProto.DOUBLE),
        n("Range", ["i1", "G", "i1"], ["k"]),
        n("Cast", ["k"], ["kd"], to=TensorProto.DOUBLE),
        n("Div", ["kd", "Gd"], ["u"]),
        n("Mul", ["d_two", "u"], ["u2"]),
        n("Log", ["u2"], ["low"]),
        n("Sub", ["d_one", "u"], ["one_minus_u"]),
        n("Mul", ["d_two", "one_minus_u"], ["v2"]),
        n("Log", ["v2"], ["log_v2"]),
        n("Neg", ["log_v2"], ["high"]),
        n("LessOrEqual", ["u", "d_half"], ["is_low"]),
        n("Where", ["is_low", "low", "high"], ["inner"]),
        n("Slice", ["inner", "i0v", "i1v"], ["in_a"]),
        n("Slice", ["inner", "i1v", "i2v"], ["in_b"]),
        n("Sub", ["in_b", "in_a"], ["step_lo"]),
        n("Sub", ["in_a", "step_lo"], ["ghost_lo"]),
        n("Slice", ["inner", "im1v", "imaxv"], ["in_y"]),
        n("Slice", ["inner", "im2v", "im1v"], ["in_x"]),
        n("Sub", ["in_y", "in_x"], ["step_hi"]),
        n("Add", ["in_y", "step_hi"], ["ghost_hi"]),
        n("Concat", ["ghost_lo", "inner", "ghost_hi"], ["nodes_d"], axis=0),
        n("Slice", ["nodes_d", "i1v", "imaxv"], ["right_d"]),
        n("Slice", ["nodes_d", "i0v", "im1v"], ["left_d"]),
        n("Sub", ["right_d", "left_d"], ["len_d"]),
        n("Div", ["d_one", "len_d"], ["inv_len_d"]),
        n("CastLike", ["nodes_d", "X"], ["nodes"]),
        n("CastLike", ["inv_len_d", "X"], ["inv_len"]),
    ]


def _attr_ref() -> onnx.AttributeProto:
    """value_int = @num_grids: an attribute reference to the function's num_grids."""
    attr = onnx.AttributeProto()
    attr.name, attr.ref_attr_name, attr.type = "value_int", ATTR_NUM_GRIDS, onnx.AttributeProto.INT
    return attr


def _locate() -> list[onnx.NodeProto]:
    """Nodes -> cells c1, c2 (int64 [B, P]) and local coordinates t1, t2 ([B, P]) of both pair members."""
    n = helper.make_node
    return [
        n("CastLike", ["d_half", "X"], ["x_half"]),
        n("CastLike", ["d_one", "X"], ["x_one"]),
        n("Sub", ["x_one", "x_one"], ["x_zero"]),
        n("CastLike", ["G", "X"], ["x_G"]),
        n("Sub", ["G", "i1"], ["G_m1"]),
        n("CastLike", ["G_m1", "X"], ["x_Gm1"]),
        n("Abs", ["X"], ["abs_x"]),
        n("Neg", ["abs_x"], ["neg_abs"]),
        n("Exp", ["neg_abs"], ["exp_x"]),
        n("Mul", ["x_half", "exp_x"], ["tail"]),
        n("Sub", ["x_one", "tail"], ["upper"]),
        n("LessOrEqual", ["X", "x_zero"], ["is_neg"]),
        n("Where", ["is_neg", "tail", "upper"], ["cdf"]),
        n("Mul", ["cdf", "x_G"], ["scaled"]),
        n("Floor", ["scaled"], ["floor"]),
        n("Clip", ["floor", "x_zero", "x_Gm1"], ["cell_f"]),
        n("Cast", ["cell_f"], ["cell"], to=TensorProto.INT64),
        n("Gather", ["nodes", "cell"], ["node_at"]),
        n("Gather", ["inv_len", "cell"], ["slope"]),
        n("Sub", ["X", "node_at"], ["offset"]),
        n("Mul", ["offset", "slope"], ["t"]),
        _const("pair_shape", [0, -1, 2]),
        n("Reshape", ["t", "pair_shape"], ["t_pairs"]),
        n("Reshape", ["cell", "pair_shape"], ["cell_pairs"]),
        n("Gather", ["t_pairs", "i0"], ["t1"], axis=2),
        n("Gather", ["t_pairs", "i1"], ["t2"], axis=2),
        n("Gather", ["cell_pairs", "i0"], ["c1"], axis=2),
        n("Gather", ["cell_pairs", "i1"], ["c2"], axis=2),
    ]


def _evaluate() -> list[onnx.NodeProto]:
    """Nodes -> Y: gather the 4 per-cell tables and sum T00 + t1 d1 + t2 d2 + t1 t2 cross over the pairs."""
    n = helper.make_node
    nodes = [
        n("Shape", ["table"], ["P_v"], start=0, end=1),
        n("Shape", ["table"], ["N_v"], start=3, end=4),
        n("Squeeze", ["P_v"], ["P"]),
        n("Range", ["i0", "P", "i1"], ["pair_idx"]),
        n("Mul", ["G", "G"], ["GG"]),
        n("Mul", ["pair_idx", "GG"], ["pair_base"]),
        n("Mul", ["c1", "G"], ["c1_off"]),
        n("Add", ["c1_off", "c2"], ["cell_off"]),
        n("Add", ["cell_off", "pair_base"], ["row"]),  # [B, P]: row of the cell in the [P*G*G, N] tables
        _const("axes12", [1, 2]),
        _const("z2", [0, 0]), _const("o2", [1, 1]), _const("m2", [-1, -1]), _const("big2", [_INT64_MAX] * 2),
        _const("z_o", [0, 1]), _const("o_z", [1, 0]), _const("m_big", [-1, _INT64_MAX]),
        _const("big_m", [_INT64_MAX, -1]),
        n("Slice", ["table", "z2", "m2", "axes12"], ["T00"]),
        n("Slice", ["table", "o_z", "big_m", "axes12"], ["T10"]),
        n("Slice", ["table", "z_o", "m_big", "axes12"], ["T01"]),
        n("Slice", ["table", "o2", "big2", "axes12"], ["T11"]),
        n("Sub", ["T10", "T00"], ["D1"]),
        n("Sub", ["T01", "T00"], ["D2"]),
        n("Sub", ["T11", "T00"], ["E"]),
        n("Sub", ["E", "D1"], ["E1"]),
        n("Sub", ["E1", "D2"], ["D3"]),
        n("Concat", ["im1v", "N_v"], ["flat_shape"], axis=0),
        n("Unsqueeze", ["t1", "i1v"], ["t1_row"]),  # [B, 1, P]
        n("Unsqueeze", ["t2", "i1v"], ["t2_row"]),
        _const("d_fmax", 3.4028234663852886e38, TensorProto.DOUBLE),  # float32's largest finite value
        n("CastLike", ["d_fmax", "X"], ["fmax"]),
        n("Mul", ["t1", "t2"], ["t12_raw"]),  # overflows for far-out pairs: cap it so t1 t2 x 0 stays 0, not NaN
        n("IsInf", ["t12_raw"], ["t12_inf"]),
        n("Sign", ["t12_raw"], ["t12_sign"]),
        n("Mul", ["t12_sign", "fmax"], ["t12_cap"]),
        n("Where", ["t12_inf", "t12_cap", "t12_raw"], ["t12"]),
        n("Unsqueeze", ["t12", "i1v"], ["t12_row"]),
    ]
    for src, coef, out in (("D1", "t1_row", "y1"), ("D2", "t2_row", "y2"), ("D3", "t12_row", "y3")):
        nodes += [
            n("Reshape", [src, "flat_shape"], [f"{src}_flat"]),
            n("Gather", [f"{src}_flat", "row"], [f"{src}_rows"]),  # [B, P, N]
            n("MatMul", [coef, f"{src}_rows"], [f"{out}_row"]),  # [B, 1, N]
        ]
    return nodes + [
        n("Reshape", ["T00", "flat_shape"], ["T00_flat"]),
        n("Gather", ["T00_flat", "row"], ["T00_rows"]),
        n("ReduceSum", ["T00_rows", "i1v"], ["y0"], keepdims=0),
        n("Squeeze", ["y1_row", "i1v"], ["y1"]),
        n("Squeeze", ["y2_row", "i1v"], ["y2"]),
        n("Squeeze", ["y3_row", "i1v"], ["y3"]),
        n("Add", ["y0", "y1"], ["y01"]),
        n("Add", ["y01", "y2"], ["y012"]),
        n("Add", ["y012", "y3"], ["Y"]),
    ]


def function_body(opset: int) -> onnx.FunctionProto:
    """The model-local FunctionProto of lmkan.LMKAN2D: the op's math in standard ONNX ops of `opset` (>= 15)."""
    if opset < MIN_BODY_OPSET:
        raise ValueError(f"the LMKAN2D function body needs opset >= {MIN_BODY_OPSET}, got {opset}")
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs=["X", "table"],
        outputs=["Y"],
        nodes=_grid_nodes() + _locate() + _evaluate(),
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[ATTR_NUM_GRIDS],
        doc_string="Standard-op body of lmkan.LMKAN2D (see lmkan_surgery/onnx/schema.py).",
    )
