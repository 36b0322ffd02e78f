"""dsmr_parser for zapd, without its DLMS cryptography until a meter is encrypted.

`dsmr_parser.parsers` imports `cryptography` and `dlms_cosem` (with `asn1crypto`, `attrs`,
`dateutil`) at its top for the encrypted Luxembourg/Austrian meters: about 10 MB of a gateway's
50 MB budget, for a path a plain DSMR meter never takes. A plain telegram begins with "/", so
`TelegramParser.parse` never reaches those names (its `GeneralGlobalCipher.TAG` probe sits behind
an `unhexlify` that fails first). So the first import of dsmr_parser here stands in a `_Deferred`
for each of those names; `load_crypto()` (called for an encrypted meter, and by any stand-in that
is touched after all) imports the real modules and puts the real objects into dsmr_parser's
namespace, so an encrypted meter runs on dsmr_parser exactly as published.

Likewise `dsmr_parser.clients/__init__` imports its serial and socket clients (and `serialx`),
which zapd does not use: only `telegram_buffer` is loaded, from its file. The one upstream fix
(lazy imports in dsmr_parser) would make this module a plain re-export; see docs/decisions.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

# module -> the names dsmr_parser.parsers takes from it (its own alias on the right)
_CRYPTO_NAMES: dict[str, dict[str, str]] = {
    "cryptography.hazmat.primitives.ciphers": {"Cipher": "Cipher", "algorithms": "algorithms", "modes": "modes"},
    "dlms_cosem.connection": {"XDlmsApduFactory": "XDlmsApduFactory"},
    "dlms_cosem.exceptions": {"DecryptionError": "DlmsDecryptionError"},
    "dlms_cosem.protocol.xdlms": {"GeneralGlobalCipher": "GeneralGlobalCipher"},
}


class _Deferred:
    """Stands in for one name of a module not imported yet; touching it imports the real thing."""

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name

    def _real(self) -> Any:
        load_crypto()
        return getattr(importlib.import_module(self._module), self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)


def _import_parsers() -> types.ModuleType:
    """`dsmr_parser.parsers` with `_Deferred` stand-ins for its crypto imports (real ones if loaded)."""
    if "dsmr_parser.parsers" in sys.modules:
        return sys.modules["dsmr_parser.parsers"]
    stubs: list[str] = []
    for module, names in _CRYPTO_NAMES.items():
        if module in sys.modules:
            continue
        stub = types.ModuleType(module)
        for name in names:
            setattr(stub, name, _Deferred(module, name))
        sys.modules[module] = stub
        stubs.append(module)
    try:
        return importlib.import_module("dsmr_parser.parsers")
    finally:
        for module in stubs:
            del sys.modules[module]  # the real module imports normally from now on


def _import_telegram_buffer() -> types.ModuleType:
    """`dsmr_parser.clients.telegram_buffer` from its file, without the clients package's __init__."""
    name = "dsmr_parser.clients.telegram_buffer"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("dsmr_parser.clients")
    if package is None or not package.submodule_search_locations:
        raise ImportError("dsmr_parser.clients not found", name=name)
    folder = next(iter(package.submodule_search_locations))
    spec = importlib.util.spec_from_file_location(name, f"{folder}/telegram_buffer.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"{name} not found in {folder}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # `import dsmr_parser.clients` later reuses it
    spec.loader.exec_module(module)
    return module


def load_crypto() -> None:
    """Import dsmr_parser's DLMS cryptography for real and hand it to `dsmr_parser.parsers`."""
    for module, names in _CRYPTO_NAMES.items():
        real = importlib.import_module(module)
        for name, alias in names.items():
            setattr(parsers, alias, getattr(real, name))


parsers = _import_parsers()
_buffers = _import_telegram_buffer()

if TYPE_CHECKING:
    from dsmr_parser.clients.telegram_buffer import EncryptedTelegramBuffer, TelegramBuffer
    from dsmr_parser.parsers import TelegramParser
else:
    TelegramParser = parsers.TelegramParser
    TelegramBuffer = _buffers.TelegramBuffer
    EncryptedTelegramBuffer = _buffers.EncryptedTelegramBuffer

from dsmr_parser import telegram_specifications  # noqa: E402  (after the stand-ins are in place)
from dsmr_parser.exceptions import DecryptionError, InvalidChecksumError, ParseError  # noqa: E402

__all__ = [
    "DecryptionError",
    "EncryptedTelegramBuffer",
    "InvalidChecksumError",
    "ParseError",
    "TelegramBuffer",
    "TelegramParser",
    "load_crypto",
    "telegram_specifications",
]
