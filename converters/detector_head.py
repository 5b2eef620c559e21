"""The decoding tail of a YOLO-style detector, to keep in float when the rest is quantized to int8.

A YOLO head ends in arithmetic whose tensors span very different ranges at once: box coordinates in
pixels (0..640) concatenated with class scores (0..1). One int8 scale for such a tensor rounds every
score to zero, and a naively quantized YOLO finds nothing (onnxruntime #14233: "exclude the nodes at
the end ... their tensor range is very large"; Ultralytics' own int8 exports ignore the same subgraph).

The tail is found from the graph, not from node names (which differ by exporter and version): it is
everything on the way to the detection output from the points where a convolution's feature map is
flattened into rows of boxes (a Reshape or Flatten of a convolution's output, or of a Concat of several).
That covers YOLOv5's grid decoding and YOLOv8's DFL (a fixed 1x1 convolution over a softmax, after the
flattening) alike; the convolutions before those points, the head's last feature layers, stay quantized.
"""

from __future__ import annotations

from typing import Any

__all__ = ["float_tail"]

_CONV = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"}


def _conv_fed(node: Any, producers: dict[str, Any]) -> bool:
    """Whether ``node``'s data input is a convolution's output, or a Concat of convolutions' outputs."""
    src = producers.get(node.input[0]) if node.input else None
    if src is None:
        return False
    if src.op_type in _CONV:
        return True
    return src.op_type == "Concat" and all(
        producers.get(i) is not None and producers[i].op_type in _CONV for i in src.input
    )


def float_tail(model: Any, output: str) -> list[str]:
    """Names of the nodes between the detector's flattened feature maps and ``output`` (an onnx ModelProto).

    Unnamed nodes are given names (``quantize_static`` excludes nodes by name), so pass the model that is
    then quantized. Returns [] when no such tail is found.
    """
    graph = model.graph
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}_edge"
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    if output not in producers:
        return []
    ancestors: dict[int, Any] = {}
    stack = [producers[output]]
    while stack:
        node = stack.pop()
        if id(node) not in ancestors:
            ancestors[id(node)] = node
            stack.extend(producers[i] for i in node.input if i in producers)
    starts = [n for n in ancestors.values() if n.op_type in ("Reshape", "Flatten") and _conv_fed(n, producers)]
    tail: dict[int, Any] = {}
    stack = list(starts)
    while stack:
        node = stack.pop()
        if id(node) in tail or id(node) not in ancestors:
            continue
        tail[id(node)] = node
        stack.extend(c for o in node.output for c in consumers.get(o, ()))
    return [n.name for n in tail.values()]
