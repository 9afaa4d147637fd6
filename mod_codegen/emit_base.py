"""The walker every text emitter shares.

An emitter is a table from op to a format string plus how to print leaves;
the walk, naming and the function frame are here. Emitters only print: the
index arithmetic was done in the IR (see passes.build_load)."""
from __future__ import annotations

from .ir import Graph, Node, Op


class TextEmitter:
    """Subclasses fill `formats` ({0}, {1}, {2} are operand names) and override
    `leaf`, `load` and `cast`."""

    formats: dict[Op, str] = {}
    indent = "    "

    def leaf(self, node: Node) -> str:
        raise NotImplementedError

    def load(self, node: Node, offset: str) -> str:
        raise NotImplementedError

    def cast(self, node: Node, src: Node, x: str) -> str:
        raise NotImplementedError

    def op_format(self, node: Node, operands: list[Node]) -> str:
        """Hook for ops whose spelling depends on operand types (e.g. logical vs bitwise not)."""
        if node.op not in self.formats:
            raise NotImplementedError(f"{type(self).__name__} cannot print {node.op}")
        return self.formats[node.op]

    def body(self, graph: Graph, prefix: str = "v") -> tuple[list[str], list[str]]:
        """Statements computing every node, and the names of the outputs."""
        names: list[str] = []
        lines: list[str] = []
        for i in range(len(graph.nodes)):
            name = f"{prefix}{i}"
            lines.append(f"{name} = {self.expression(graph, i, names)}")
            names.append(name)
        return lines, [names[o] for o in graph.outputs]

    def expression(self, graph: Graph, i: int, names: list[str]) -> str:
        """The right-hand side for node i; `names` holds the names of nodes 0 .. i-1."""
        n = graph.nodes[i]
        if n.op in (Op.INPUT, Op.CONST, Op.SCALAR, Op.BUF_SIZE, Op.BUF_STRIDE):
            return self.leaf(n)
        if n.op is Op.LOAD:
            return self.load(n, names[n.args[0]])
        if n.op is Op.CAST:
            return self.cast(n, graph.nodes[n.args[0]], names[n.args[0]])
        fmt = self.op_format(n, [graph.nodes[a] for a in n.args])
        return fmt.format(*(names[a] for a in n.args))
