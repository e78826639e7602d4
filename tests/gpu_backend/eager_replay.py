"""Stand-in for a captured CUDA graph in CPU tests: the graph classes' static buffers, buckets and padding
run for real, and a "replay" runs the captured body eagerly."""


class EagerReplay:
    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()
