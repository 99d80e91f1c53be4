"""Reading TF graphs in tests: which ops are computed from which."""


def downstream(graph, sources):
    """Names of the ops of `graph` computed from an op in `sources` (names), through data or control edges."""
    reached = set(sources)
    for op in graph.get_operations():  # in creation order, which is topological
        if any(t.op.name in reached for t in op.inputs) or any(c.name in reached for c in op.control_inputs):
            reached.add(op.name)
    return reached
