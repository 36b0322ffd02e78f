"""The `driver = "ocpp"` config model: one listener and the charge points allowed to connect to it.

Its own module (not zapd/config.py) so the OCPP keys live next to the driver; drivers/ocpp/family.py
registers it, and zapd/config.py's device union comes from the registry. It must not import zapd.config
(that module imports the registry, which imports this one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from drivers.config_base import DeviceModel, _Strict
from drivers.ocpp.config_mixins import OcppChargePointMixin, OcppDeviceMixin

IEC_MIN_CURRENT_A = 6.0


class OcppChargePoint(OcppChargePointMixin, _Strict):
    """One charger as installed: its OCPP identity, its sockets and the limits of its circuit."""

    id: str = Field(
        min_length=1,
        max_length=48,
        pattern=r"^[A-Za-z0-9_-]+$",
        description=(
            "Charge point identity: the charger connects to `ws://HOST:PORT/ocpp/<id>` (set this as its "
            '"charge point id" / "charge box identity"). Names its DERs `<device id>.<id>.<connector>`. '
            "Letters, digits, `_` and `-`, at most 48 (OCPP CiString48)."
        ),
    )
    connectors: int = Field(
        default=1, ge=1, le=8, description="Sockets (OCPP connectors 1..N); each one is an `ev_charger` DER."
    )
    max_current_a: float = Field(
        gt=0,
        le=80,
        description="Highest charging current per phase in A per connector: the lowest of charger, cable and breaker.",
    )
    min_current_a: float = Field(
        default=IEC_MIN_CURRENT_A,
        ge=IEC_MIN_CURRENT_A,
        le=80,
        description="Lowest charging current per phase in A (IEC 61851: at least 6 A); below it zapd pauses (0 A).",
    )
    phases: Literal[1, 3] = Field(default=3, description="Phases wired to the charger.")
    voltage_v: float = Field(default=230.0, gt=0, le=480, description="Phase voltage in V, to turn current into power.")
    phase_switching: bool = Field(
        default=False,
        description=(
            "The charger switches between 1 and 3 phases on `numberPhases` in a charging profile. Not set: "
            "zapd always asks for `phases` and refuses a command for other phases."
        ),
    )
    safe_current_a: float | None = Field(
        default=None,
        ge=0,
        le=80,
        description=(
            "Current per phase in A the charger holds when zapd's live profile expires (zapd stopped, crashed "
            "or unreachable): sent as its lowest TxDefaultProfile. 0 = pause; else at least `min_current_a`. "
            "Not set: `min_current_a`."
        ),
    )
    password: str | None = Field(
        default=None,
        min_length=8,
        max_length=40,
        description=(
            "OCPP security profile 1/2: the HTTP basic auth password (`AuthorizationKey`) the charger sends, "
            "user name = the id. Never logged. Not set (and no `password_file`): no authentication."
        ),
    )
    password_file: Path | None = Field(
        default=None,
        description=(
            "File holding the basic auth password (first line), readable by zapd only; read at each "
            "connection. Instead of `password`."
        ),
    )
    id_tags: list[str] | None = Field(
        default=None,
        description=(
            "RFID/idTags accepted for Authorize and StartTransaction. Not set: any idTag is accepted (the site "
            "is private; zapd only manages current)."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> OcppChargePoint:
        if self.min_current_a > self.max_current_a:
            raise ValueError("min_current_a must not exceed max_current_a")
        safe = self.safe_current_a
        if safe is not None and safe != 0 and not self.min_current_a <= safe <= self.max_current_a:
            raise ValueError("safe_current_a must be 0 or between min_current_a and max_current_a")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self


class OcppDevice(OcppDeviceMixin, DeviceModel):
    driver: Literal["ocpp"] = Field(
        description=(
            "zapd as the local OCPP 1.6J central system: chargers connect to `ws://HOST:PORT/ocpp/<charge point "
            "id>` (wss:// with `tls_cert`). Without an `ocpp` device zapd listens for none. Its DERs are "
            "`<id>.<charge point id>.<connector>`."
        )
    )
    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Device id of the listener, unique in the file: names its DERs. Letters, digits, `_` and `-`.",
    )
    host: str = Field(
        min_length=1,
        description="Address to listen on: the gateway's LAN address the chargers reach (`0.0.0.0` = every interface).",
    )
    port: int = Field(default=8887, ge=1, le=65535, description="TCP port to listen on.")
    tls_cert: Path | None = Field(
        default=None,
        description="OCPP security profile 2: PEM certificate (chain) of the listener; chargers then use wss://.",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of `tls_cert`; set together with it.")
    heartbeat_s: int = Field(
        default=300, ge=10, le=86_400, description="Heartbeat interval in s zapd gives chargers at BootNotification."
    )
    meter_interval_s: int = Field(
        default=10,
        ge=1,
        le=3600,
        description=(
            "`MeterValueSampleInterval` in s zapd sets on each charger; a connector not heard of for three "
            "intervals counts as unknown."
        ),
    )
    call_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Timeout of each call zapd makes to a charger in s; a late answer counts as an error.",
    )
    profile_validity_s: int = Field(
        default=300,
        ge=30,
        le=86_400,
        description=(
            "zapd's live charging profile is valid for this many s (`validTo`) and re-sent within a third of "
            "it; when zapd stops renewing it the charger falls back to `safe_current_a`."
        ),
    )
    charge_points: list[OcppChargePoint] = Field(
        min_length=1, description="The chargers allowed to connect; any other charge point id is refused."
    )

    @model_validator(mode="after")
    def _consistent(self) -> OcppDevice:
        ids = [cp.id for cp in self.charge_points]
        if len(set(ids)) != len(ids):
            raise ValueError("charge point ids must be unique")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self
