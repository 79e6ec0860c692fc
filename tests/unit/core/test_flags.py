import argparse

import pytest

from kube_router.flags import boolean
from kube_router.flags import duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600), ("15", 15), ("0.5", 0.5)])
def test_durations_read_as_go_writes_them(text, seconds):
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m junk", "-"])
def test_a_bad_duration_is_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        duration(text)


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("1", True),
                                             ("off", False)])
def test_booleans(text, value):
    assert boolean(text) is value


def test_a_bad_boolean_names_the_value():
    with pytest.raises(argparse.ArgumentTypeError, match="maybe"):
        boolean("maybe")
