"""The virtual vehicle: DBC-driven traffic, driving physics, transports, replay and recording."""

from sim.errors import ScenarioError, SimError
from sim.record import LogRecorder
from sim.replay import LogReplay
from sim.runner import BusSink, FrameProducer, FrameSink, SimulationRunner
from sim.scenario import Scenario, load_scenario
from sim.socketcand import SocketcandServer
from sim.traffic import TrafficGenerator
from sim.vehicle import VehicleModel

__all__: list[str] = [
    "BusSink",
    "FrameProducer",
    "FrameSink",
    "LogRecorder",
    "LogReplay",
    "Scenario",
    "ScenarioError",
    "SimError",
    "SimulationRunner",
    "SocketcandServer",
    "TrafficGenerator",
    "VehicleModel",
    "load_scenario",
]
