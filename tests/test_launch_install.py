"""launch.py installs with uv when it can, told everything pip was configured with (no install runs here)."""
import launch

PIP_CONFIG = """:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
site.index-url="https://mirror.example/simple"
"""


def test_pip_configuration_becomes_uv_options_once_each():
    options, cert = launch.pip_config_options(PIP_CONFIG)
    assert options == ["--find-links", "/opt/wheels", "--constraint", "/etc/xdg/pip/constraints.txt",
                       "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url",
                       "file:///opt/pypi-more/simple", "--index-url", "https://mirror.example/simple"]
    assert cert == "/etc/ssl/certs/ca-certificates.crt"
    assert launch.pip_config_options("") == ([], None)


def test_easel_pip_keeps_to_pip(monkeypatch):
    monkeypatch.setenv("EASEL_PIP", "1")
    command, _ = launch.uv_install_command()
    assert command is None
