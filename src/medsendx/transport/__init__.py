"""Destinations: one small interface (:mod:`medsendx.transport.base`), chosen by URL."""

from medsendx.transport.base import DeliveryResult, Transport, TransportError, open_transport

__all__ = ["DeliveryResult", "Transport", "TransportError", "open_transport"]
