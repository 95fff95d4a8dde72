"""A base for test timers with their own noise models: the Timer protocol on a virtual clock."""

from attnbench.measure.protocol import Sample


class VirtualTimer:
    """now_ms() is the sum of the device times handed out; a subclass's run(fn, n) draws them and returns
    self.emit(times)."""

    mode = "fake"

    def __init__(self) -> None:
        self.t = 0.0

    def now_ms(self) -> float:
        return self.t

    def sync(self) -> None:
        pass

    def emit(self, device_ms) -> list[Sample]:
        out = [Sample(device_ms=float(ms)) for ms in device_ms]
        self.t += sum(s.device_ms for s in out)
        return out
