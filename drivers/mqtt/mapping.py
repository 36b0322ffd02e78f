"""Declarative topic → reading mappings, and presets for devices installers meet.

A mapping says: messages on this topic filter carry, at this JSON path (or as the whole
payload when there is no path), a number in this unit; it becomes value `key` of DER
`der_id`. Keeping it data means a new MQTT device is a config entry, not code. The presets
are the topic layouts of Shelly Gen2+ energy meters, Tasmota SENSOR telemetry and OpenDTU.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from zapd.model import EXPORT_WH, IMPORT_WH, PHASE_CURRENT_A, POWER_W, DerKind

ENERGY_WH = "energy_wh"  # PV or load: lifetime energy produced/consumed
UNITS: Mapping[str, float] = {"": 1.0, "W": 1.0, "kW": 1000.0, "Wh": 1.0, "kWh": 1000.0, "%": 0.01, "A": 1.0, "V": 1.0}
Preset = Literal["shelly_em", "shelly_em_rpc", "tasmota_sensor", "opendtu"]


class BadPayload(ValueError):
    """The message could not be read as the mapping expects (not JSON, not a number)."""


@dataclass(frozen=True, slots=True)
class TopicMapping:
    topic: str  # MQTT topic filter (wildcards allowed)
    der_id: str
    kind: DerKind
    key: str  # Reading.values key, e.g. power_w
    path: str | None = None  # dotted JSON path ("ENERGY.Power", "params.em:0.total_act_power"); None = plain number
    unit: str = ""
    scale: float = 1.0
    setup: str = ""  # the device setting without which nothing arrives on `topic` (PRESET_SETUP)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {sorted(UNITS)}, got {self.unit!r}")
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a non-zero number, got {self.scale!r}")

    def extract(self, payload: bytes | Any) -> float | None:
        """The value in zapd units; None when this message does not carry it (other component, other event)."""
        if self.path is None:
            raw: Any = _number_payload(payload)
        else:
            node = payload if not isinstance(payload, bytes | str) else _json_payload(payload)
            for part in self.path.split("."):
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    return None
            raw = node
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise BadPayload(f"{self.topic} {self.path or '(payload)'}: not a number: {raw!r:.40}")
        # NaN, ±Inf ("NaN", "inf", 1e400 in the JSON) and absurd magnitudes are returned as they are: the
        # reading carries them to the drivers' guard (drivers/api.py), which makes the DER unknown and counts.
        return float(raw) * self.scale * UNITS[self.unit]


def decode_json(payload: bytes | str) -> Any:
    return _json_payload(payload)


def _json_payload(payload: bytes | str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadPayload(f"not JSON: {exc}") from None


def _number_payload(payload: Any) -> Any:
    if isinstance(payload, bytes | str):
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        try:
            return float(text.strip())
        except ValueError:
            raise BadPayload(f"not a number: {text[:40]!r}") from None
    return payload


# What each preset needs set on the device itself: without it the device publishes nothing zapd
# reads, and all a technician sees is a stale meter. Shown in the health reason and in docs/devices.md.
PRESET_SETUP: dict[str, str] = {
    "shelly_em": 'enable "Generic status update over MQTT" in the Shelly\'s Settings > MQTT (status topics)',
    "shelly_em_rpc": 'enable "RPC status notifications over MQTT" in the Shelly\'s Settings > MQTT (events/rpc)',
    "tasmota_sensor": "Tasmota sends SENSOR every TelePeriod, 300 s by default: set `TelePeriod 10` (below stale_s)",
    "opendtu": "",
}


def preset_mappings(preset: Preset, source: str, der_id: str, kind: DerKind) -> list[TopicMapping]:
    """Mappings for a known device. `source` is the device's topic root: the Shelly MQTT prefix,
    the Tasmota topic, or OpenDTU's `<base>/<inverter serial>`."""

    def m(topic: str, key: str, path: str | None, unit: str = "") -> TopicMapping:
        return TopicMapping(
            topic=topic, der_id=der_id, kind=kind, key=key, path=path, unit=unit, setup=PRESET_SETUP[preset]
        )

    if preset == "shelly_em":
        # Shelly Pro 3EM / Gen2+ EM: status topics (enable "Generic status update over MQTT").
        # total_act_power is + = import; currents are magnitudes (conservative for the fuse check).
        return [
            m(f"{source}/status/em:0", POWER_W, "total_act_power", "W"),
            *(m(f"{source}/status/em:0", PHASE_CURRENT_A[i], f"{p}_current", "A") for i, p in enumerate("abc")),
            m(f"{source}/status/emdata:0", IMPORT_WH, "total_act", "Wh"),
            m(f"{source}/status/emdata:0", EXPORT_WH, "total_act_ret", "Wh"),
        ]
    if preset == "shelly_em_rpc":
        # The same meter's NotifyStatus events (enable "RPC status notifications over MQTT").
        topic = f"{source}/events/rpc"
        return [
            m(topic, POWER_W, "params.em:0.total_act_power", "W"),
            *(m(topic, PHASE_CURRENT_A[i], f"params.em:0.{p}_current", "A") for i, p in enumerate("abc")),
            m(topic, IMPORT_WH, "params.emdata:0.total_act", "Wh"),
            m(topic, EXPORT_WH, "params.emdata:0.total_act_ret", "Wh"),
        ]
    if preset == "tasmota_sensor":
        # Tasmota energy monitoring: tele/<topic>/SENSOR every TelePeriod; Total is kWh.
        topic = f"tele/{source}/SENSOR"
        energy_key = IMPORT_WH if kind is DerKind.METER else ENERGY_WH
        return [m(topic, POWER_W, "ENERGY.Power", "W"), m(topic, energy_key, "ENERGY.Total", "kWh")]
    if preset == "opendtu":
        # OpenDTU: one plain-number topic per value; channel 0 is the inverter's AC side.
        return [m(f"{source}/0/power", POWER_W, None, "W"), m(f"{source}/0/yieldtotal", ENERGY_WH, None, "kWh")]
    raise ValueError(f"unknown preset {preset!r}")


__all__ = [
    "ENERGY_WH", "PRESET_SETUP", "UNITS", "BadPayload", "Preset", "TopicMapping", "decode_json", "preset_mappings",
]  # fmt: skip
