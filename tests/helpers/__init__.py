"""Helper code the tests run in other processes (fault injection, multi-device and multi-host
steps) and the plumbing to start those processes. Not collected as tests."""
