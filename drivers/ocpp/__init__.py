"""zapd as the site's local OCPP 1.6J central system: chargers connect to zapd, zapd sets their current.

Kept import-light: `zapd.config` imports `drivers.ocpp.config`, which must not pull in websockets.
"""
