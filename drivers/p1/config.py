"""The P1 (DSMR) config models: a meter's P1 port through a USB cable or a network reader.

drivers/p1/family.py registers them; the DSMR parser (and its crypto for Luxembourg) is imported
only when a config has a P1 meter (drivers/p1/factory.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from drivers.config_base import DeviceModel, MeterRole, _same_as
from drivers.config_types import RoleMeterMixin
from drivers.p1.config_mixins import DSMR_TELEGRAM_INTERVAL_S as DSMR_TELEGRAM_INTERVAL_S
from drivers.p1.config_mixins import SerialPortMixin
from drivers.p1.config_mixins import telegram_interval_s as telegram_interval_s

DsmrVersion = Annotated[
    Literal["2.2", "4", "5", "5B", "5L", "5S", "Q3D"],
    Field(description="DSMR version: 2.2, 4, 5, 5B (Belgium), 5L (Luxembourg), 5S (Sweden) or Q3D."),
]
TelegramInterval = Annotated[
    float | None,
    Field(
        gt=0,
        le=3600,
        description=(
            "The meter's telegram interval in s; a reading older than three intervals counts as unknown. Not "
            "set: what `dsmr_version` prescribes (10 for 2.2, 4, 5L, 5S and Q3D; 1 for 5 and 5B)."
        ),
    ),
]
DecryptionKey = Annotated[
    str | None,
    Field(
        description=(
            'Luxembourg Smarty meters (`dsmr_version = "5L"`): the decryption key from the grid operator, '
            "32 hex digits (AES-128). Not set: telegrams are plain text."
        ),
    ),
]


class P1SerialDevice(RoleMeterMixin, SerialPortMixin, DeviceModel):
    driver: Literal["p1_serial"] = Field(
        description="A smart meter's P1 port (DSMR) through a USB cable. Its DER is `<id>`."
    )
    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Device id of the meter, unique in the file: the meter's DER id. Letters, digits, `_` and `-`.",
    )
    port: str = Field(min_length=1, description="Serial port of the P1 cable, e.g. `/dev/ttyUSB0`.")
    baudrate: int | None = Field(
        default=None,
        gt=0,
        le=921_600,
        description=(
            "Line speed in bit/s. Not set: what the DSMR version prescribes (9600 7E1 for 2.2, 115200 7E1 for "
            "4, 115200 8N1 otherwise)."
        ),
    )
    dsmr_version: DsmrVersion = "5"
    poll_s: TelegramInterval = None
    decryption_key: DecryptionKey = None
    role: MeterRole = Field(
        default="grid",
        description=(
            "What the meter measures: `grid` (the site's connection point: the fuse and export limits act on "
            "it; exactly one per site), `pv`, `ev` or `submeter` (recorded and shown, never controlled on)."
        ),
    )


class P1TcpDevice(RoleMeterMixin, DeviceModel):
    driver: Literal["p1_tcp"] = Field(
        description=(
            "A network P1 reader (or ser2net) that serves the meter's DSMR telegrams over TCP. Its DER is `<id>`."
        )
    )
    id: str = _same_as(P1SerialDevice, "id")
    host: str = Field(min_length=1, description="IP address or host name of the P1 reader.")
    port: int = Field(ge=1, le=65535, description="TCP port of the P1 reader.")
    dsmr_version: DsmrVersion = "5"
    poll_s: TelegramInterval = None
    decryption_key: DecryptionKey = None
    role: MeterRole = _same_as(P1SerialDevice, "role")
