"""Stand-in for a captured CUDA graph in CPU tests: the graph classes' static buffers, buckets and padding
run for real, and a "replay" runs the captured body eagerly."""

from gpu_backend.decode_graphs import DecodeGraphs
from gpu_backend.full_graphs import FullGraphs


class EagerReplay:
    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


class EagerDecodeGraphs(DecodeGraphs):
    """The CUDA-graph decode path (static buffers, buckets, padding) with eager "replays", on the CPU."""

    def _capture(self) -> None:
        self.graphs = {n: EagerReplay(lambda n=n: self._body(n)) for n in self.sizes}


class EagerFullGraphs(FullGraphs):
    """The whole-iteration graph path with eager "replays", on the CPU."""

    def _capture(self) -> None:
        self.graphs = {k: EagerReplay(lambda k=k: self._body(k)) for k in self.keys}
