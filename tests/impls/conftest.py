from tests.fixtures.fakelibs import fakelibs  # noqa: F401  (the fixture, for test_adapters*.py)
