"""Test support: the real Mosquitto broker of :mod:`agent.local_broker`, under the tests' names."""

from agent.local_broker import LocalBroker as MosquittoBroker
from agent.local_broker import free_port, mosquitto_binary

__all__ = ["MosquittoBroker", "free_port", "mosquitto_binary"]
