import subprocess
import sys

import longclip


def test_every_public_name_resolves():
    assert sorted(longclip.__all__) == sorted(longclip._EXPORTS)
    for name in longclip.__all__:
        assert getattr(longclip, name) is not None


def test_import_is_light():
    # `longclip --help` must not wait for torch and transformers.
    code = "import sys, longclip; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
