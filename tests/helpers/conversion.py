"""Checks shared by the torchvision weight-conversion tests."""
import re

import numpy as np
import pytest

from keras_deeplab.convert import assign_torchvision_weights


def assert_bad_state_dict_is_refused_naming_the_key(model, state, change, key):
    """`state` with `key` dropped, added or misshaped (`change`) is refused with an error naming the key, and
    nothing is assigned to `model`."""
    bad = dict(state)
    if change == "drop":
        del bad[key]
    elif change == "add":
        bad[key] = np.zeros(3, np.float32)
    else:
        bad[key] = np.zeros(bad[key].shape[:-1] + (bad[key].shape[-1] + 1,), np.float32)
    before = [w.numpy() for w in model.weights[:3]]
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        assign_torchvision_weights(model, bad)
    for old, new in zip(before, model.weights[:3]):  # nothing assigned on error
        np.testing.assert_array_equal(old, new.numpy())
