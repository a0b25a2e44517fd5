"""Driving physics: targets within limits, battery behaviour, charging, turns, determinism."""

from __future__ import annotations

import itertools
import math

import pytest

from sim import VehicleModel, load_scenario
from sim.scenario import parse_scenario

DT = 0.05


def _run(model: VehicleModel, seconds: float, dt: float = DT) -> list[dict[str, float]]:
    """Step the model and return a snapshot of its values after every step."""
    out = []
    for _ in range(round(seconds / dt)):
        model.step(dt)
        out.append(dict(model.values()))
    return out


def test_deterministic_for_a_seed() -> None:
    scenario = load_scenario("city")
    a = _run(VehicleModel(scenario, seed=3), 60)
    b = _run(VehicleModel(scenario, seed=3), 60)
    c = _run(VehicleModel(scenario, seed=4), 60)
    assert a == b
    assert a[-1]["speed_kph"] == c[-1]["speed_kph"]  # physics does not depend on the seed …
    assert a[-1]["wheel_speed_fl_kph"] != c[-1]["wheel_speed_fl_kph"]  # … sensor noise does


def test_speed_tracks_targets_within_limits() -> None:
    scenario = parse_scenario(
        """
[[phase]]
duration_s = 40
target_speed_kph = 100
accel_limit_mps2 = 2.5
[[phase]]
duration_s = 40
target_speed_kph = 30
decel_limit_mps2 = 1.5
[[phase]]
duration_s = 30
target_speed_kph = 0
decel_limit_mps2 = 4.0
"""
    )
    model = VehicleModel(scenario)
    trace = _run(model, 110)
    speeds = [v["speed_kph"] for v in trace]
    for prev, cur, snap in zip(speeds, speeds[1:], trace[1:], strict=False):
        accel = (cur - prev) / 3.6 / DT
        assert -4.0 - 1e-6 <= accel <= 2.5 + 1e-6
        assert snap["accel_mps2"] == pytest.approx(accel, abs=0.05)
    assert trace[int(39 / DT)]["speed_kph"] == pytest.approx(100, abs=0.5)
    assert trace[int(79 / DT)]["speed_kph"] == pytest.approx(30, abs=0.5)
    assert trace[-1]["speed_kph"] == 0.0
    assert max(speeds) <= 100.5  # no overshoot
    assert trace[int(39 / DT)]["gear"] == 3  # D


def test_soc_falls_while_driving_and_regen_charges() -> None:
    model = VehicleModel(load_scenario("highway"))
    trace = _run(model, 200)
    soc = [v["battery_soc_pct"] for v in trace]
    assert soc[-1] < soc[0] - 0.5
    cruising = [v for v in trace if v["speed_kph"] > 100 and abs(v["accel_mps2"]) < 0.05]
    assert cruising and all(v["battery_current_a"] > 0 for v in cruising)
    assert all(v["battery_voltage_v"] < v["battery_ocv_v"] for v in cruising)  # sag under load
    regen = [v for v in trace if v["motor_torque_nm"] < -20]
    assert regen, "the exit ramp brakes regeneratively"
    assert all(v["battery_current_a"] < 0 for v in regen)
    assert all(v["battery_voltage_v"] > v["battery_ocv_v"] for v in regen)
    assert max(v["regen_energy_kwh"] for v in trace) > 0.05


def test_energy_is_consistent() -> None:
    """∫V·I dt from the pack matches the SoC drop × capacity × OCV, and covers the road load."""
    model = VehicleModel(load_scenario("highway"))
    start = dict(model.values())
    e_terminal = e_ocv = e_mech = e_elec = 0.0
    for _ in range(round(200 / DT)):
        model.step(DT)
        v = model.values()
        e_terminal += v["battery_voltage_v"] * v["battery_current_a"] * DT
        e_ocv += v["battery_ocv_v"] * v["battery_current_a"] * DT
        p_mech = v["motor_power_kw"] * 1000
        e_mech += p_mech * DT
        # Drivetrain efficiency 90 % both ways, plus auxiliaries (12 V, climate).
        p_elec = p_mech / 0.9 if p_mech > 0 else p_mech * 0.9
        e_elec += (p_elec + v["aux_power_kw"] * 1000) * DT
    end = model.values()
    capacity_as = end["battery_capacity_ah"] * 3600
    charge_used = (start["battery_soc_pct"] - end["battery_soc_pct"]) / 100 * capacity_as
    mean_ocv = (start["battery_ocv_v"] + end["battery_ocv_v"]) / 2
    assert e_ocv == pytest.approx(charge_used * mean_ocv, rel=0.03)
    assert e_terminal < e_ocv  # I²R losses
    assert e_terminal == pytest.approx(e_elec, rel=0.01)
    assert e_mech < e_terminal
    # Road load: the wheels did the work of drag, rolling resistance and the kinetic energy left.
    kinetic = 0.5 * 1950 * end["speed_mps"] ** 2
    assert e_mech > kinetic


def test_charging_session() -> None:
    model = VehicleModel(load_scenario("charging"))
    trace = _run(model, 1830, dt=0.5)
    charging = [v for v in trace if v["charging_state"] == 2]
    assert charging, "DC charging state"
    assert all(v["speed_kph"] == 0 and v["gear"] == 0 for v in charging)
    assert all(v["plug_state"] == 2 for v in charging)
    assert all(v["battery_current_a"] < 0 for v in charging if v["charger_power_kw"] > 1)
    soc = [v["battery_soc_pct"] for v in charging]
    assert soc[-1] > soc[0] + 60
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(soc))
    # Taper: full power below 80 %, less above.
    at_50 = next(v for v in charging if v["battery_soc_pct"] > 50)
    at_88 = next(v for v in charging if v["battery_soc_pct"] > 88)
    assert at_50["charger_power_kw"] == pytest.approx(150)
    assert at_88["charger_power_kw"] < 0.7 * at_50["charger_power_kw"]
    assert at_50["battery_voltage_v"] > at_50["battery_ocv_v"]
    # Complete at the target, and the pack warmed up with I²R.
    done = [v for v in trace if v["charging_state"] == 3]
    assert done and all(89.5 <= v["battery_soc_pct"] <= 90.5 for v in done)
    assert max(v["battery_temp_c"] for v in trace) > trace[0]["battery_temp_c"] + 5
    assert max(v["battery_temp_c"] for v in trace) < 50  # active cooling
    # Time to full counts down.
    assert at_50["time_to_full_min"] > at_88["time_to_full_min"] > 0


def test_charging_phase_brakes_first() -> None:
    scenario = parse_scenario(
        """
[[phase]]
duration_s = 20
target_speed_kph = 50
[[phase]]
duration_s = 60
charging = { power_kw = 11 }
"""
    )
    trace = _run(VehicleModel(scenario), 80)
    first_charge = next(i for i, v in enumerate(trace) if v["charger_power_kw"] > 0)
    assert first_charge * DT > 20
    assert trace[first_charge]["speed_kph"] == 0
    assert trace[-1]["charging_state"] == 1  # AC
    assert trace[-1]["ac_current_a"] > 10
    assert trace[-1]["obc_state"] == 2


def test_turns_steering_yaw_and_wheels() -> None:
    scenario = parse_scenario(
        """
[[phase]]
duration_s = 20
target_speed_kph = 30
[[phase]]
duration_s = 10
target_speed_kph = 30
turn = { steering_deg = 180 }
[[phase]]
duration_s = 10
target_speed_kph = 30
turn = { steering_deg = -180 }
"""
    )
    trace = _run(VehicleModel(scenario), 40)
    straight, left, right = trace[int(19 / DT)], trace[int(29 / DT)], trace[int(39 / DT)]
    assert straight["yaw_rate_dps"] == 0
    assert abs(straight["wheel_speed_fl_kph"] - straight["wheel_speed_fr_kph"]) < 0.3
    assert left["steering_angle_deg"] == 180 and left["yaw_rate_dps"] > 5
    assert left["lat_accel_mps2"] > 0
    assert left["wheel_speed_fr_kph"] > left["wheel_speed_fl_kph"] + 0.3  # outer wheel faster
    assert left["turn_left"] + trace[int(29 / DT) - 7]["turn_left"] >= 1  # blinking
    assert right["yaw_rate_dps"] < -5
    assert right["wheel_speed_rl_kph"] > right["wheel_speed_rr_kph"]
    # Yaw rate from the bicycle model: v · tan(δ) / wheelbase.
    v = left["speed_mps"]
    expected = math.degrees(v * math.tan(math.radians(180 / 15.5)) / 2.9)
    assert left["yaw_rate_dps"] == pytest.approx(expected, rel=1e-6)
    # Steering rate is limited (360 °/s): 180° takes ≥ 0.5 s.
    assert trace[int(20 / DT) + 1]["steering_angle_deg"] < 180


def test_motor_speed_follows_vehicle_speed() -> None:
    trace = _run(VehicleModel(load_scenario("highway")), 60)
    for v in trace[::50]:
        rpm = v["speed_mps"] / 0.34 * 9.1 * 60 / (2 * math.pi)
        assert v["motor_rpm"] == pytest.approx(rpm, abs=1e-6)


def test_body_and_doors_follow_phases() -> None:
    model = VehicleModel(load_scenario("city"))
    first = dict(model.values())
    assert first["door_fl"] == 1 and first["gear"] == 0 and first["belt_driver"] == 0
    trace = _run(model, 60)
    driving = trace[-1]
    assert driving["door_fl"] == 0 and driving["speed_kph"] > 15
    assert driving["locked"] == 1  # auto-lock when driving off
    assert driving["low_beam"] == 1 and driving["belt_driver"] == 1
    assert driving["hvac_on"] == 1
    assert driving["odometer_km"] > first["odometer_km"]
    assert 95 <= sum(1 for k in driving if k.startswith("cell_voltage_0")) <= 96
    cells = [driving[f"cell_voltage_{i:03d}_v"] for i in range(1, 97)]
    assert min(cells) == driving["cell_voltage_min_v"]
    assert sum(cells) == pytest.approx(driving["battery_voltage_v"], rel=0.01)
    assert driving["vin_char_01"] == ord("T")


def test_step_rejects_negative_dt() -> None:
    model = VehicleModel(load_scenario("city"))
    with pytest.raises(ValueError, match="dt"):
        model.step(-1)
    model.step(0)  # a no-op
    assert model.time_s == 0
    model.step(1.0)
    assert model.time_s == pytest.approx(1.0)
