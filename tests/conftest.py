pytest_plugins = ["tests.fixtures.engines", "tests.fixtures.testapp"]
