"""The loop's batch iterator wrapped by the fault-injecting tests: the wrapper passes the inner
iterator's resumable state through, so a resumed run replays the same batches."""


class WrappedBatches:
    """next(), get_state() and set_state() of `batches`; subclasses change what next returns."""

    def __init__(self, batches):
        self.batches = batches

    def __next__(self) -> dict:
        return next(self.batches)

    def get_state(self) -> dict:
        return self.batches.get_state()

    def set_state(self, state: dict) -> None:
        self.batches.set_state(state)
