"""System programs that tests run for real: mosquitto, chromium with chromedriver, openssl.

On a developer's machine a missing one skips the tests that need it, saying what to install.
Under CI=true it fails them instead: .ci/run runs `make test`, whose system-deps target
installs these packages, so a missing one there is a broken set-up, and a run that skipped
the MQTT, TLS or browser tests would be green while checking less than it says.
"""

from __future__ import annotations

import os

import pytest

CI = os.environ.get("CI") == "true"


def require(found: object, missing: str) -> None:
    """Skip (fail under CI=true) the running test with `missing` unless `found` is truthy."""
    if found:
        return
    if CI:
        pytest.fail(f"{missing} [CI=true: a missing system dependency fails the run; `make"
                    f" system-deps` installs it]", pytrace=False)
    pytest.skip(missing)


def needs(found: object, missing: str) -> pytest.MarkDecorator:
    """A mark for a test or module (pytestmark): require(found, missing) before each test;
    tests/conftest.py applies it."""
    return pytest.mark.system_dependency(bool(found), missing)
