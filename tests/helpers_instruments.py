"""User-style instruments imported by name ("tests.helpers_instruments:make_...") in the tests."""


def make_crash():
    def probe(ctx):
        if ctx.step >= 4:
            raise RuntimeError("instrument exploded")
        return {}

    return probe


def make_step_echo(scale: float = 1.0):
    def probe(ctx):
        return {"echo": ctx.step * scale}

    return probe
