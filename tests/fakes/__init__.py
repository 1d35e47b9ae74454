"""In-process fakes of the platforms the adapters talk to: real servers on 127.0.0.1, for tests."""
