"""The project's own sample web and Pushshift-format dump, used by `make demo` and the tests."""
