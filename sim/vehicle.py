"""Driving physics of the virtual battery-electric vehicle (pure computation, no I/O).

:class:`VehicleModel` follows a :class:`~sim.scenario.Scenario` phase by phase and exposes the
vehicle's state as named physical quantities (:meth:`VehicleModel.values`), which the traffic
generator binds to DBC signals. The physics is deliberately simple but *consistent*: every
quantity is derived from the same few states, so decoded traffic tells one coherent story.

Longitudinal
    The speed moves towards the phase's target with a proportional controller, a first-order lag
    (no jerk spikes) and the phase's acceleration/deceleration limits. The force needed —
    inertia + aerodynamic drag + rolling resistance + grade — is supplied by the motor within its
    torque and power limits (by drive mode); braking uses regeneration first (limited in power and
    fading out below ~8 km/h), the rest is friction braking (brake pressure, brake lamp).
Battery
    Electrical power = mechanical power / efficiency when driving, × efficiency when
    regenerating, plus auxiliary loads (12 V systems, climate). The pack current follows from
    P = (OCV − I·R)·I with an OCV curve over SoC and an internal resistance that rises in the
    cold; current is positive when discharging and negative when regenerating or charging. SoC
    integrates the current over the usable capacity (× SoH); the pack heats with I²R and is
    cooled towards ambient (actively above 32 °C). 96 series cells have small fixed offsets.
Charging
    A ``charging`` phase brakes to a stop, engages P, plugs in (3 s), hand-shakes (2 s) and then
    charges at the requested power, ramped at 50 kW/s and tapered linearly from 100 % at 80 % SoC
    to 0 at 100 % SoC (5 % floor), limited in a cold pack, until the target SoC (then
    "complete"). Leaving the phase unplugs.
Lateral
    Steering-wheel angle ramps (≤ 360 °/s) to the phase's ``turn``; road-wheel angle = steering /
    15.5; yaw rate from the bicycle model (wheelbase 2.9 m); lateral acceleration = v·yaw rate;
    wheel speeds differ by the track width in turns, plus a little seeded sensor noise.

Quantities (keys of :meth:`VehicleModel.values`, all ``float``; flags are 0/1, enums are the
numbers listed in ``can_dbc/vehicles/tbox_ev.dbc``'s value tables):

* time/motion: ``time_s``, ``speed_kph``, ``speed_mps``, ``accel_mps2``, ``lat_accel_mps2``,
  ``vert_accel_mps2``, ``yaw_rate_dps``, ``steering_angle_deg``, ``steering_rate_dps``,
  ``steering_torque_nm``, ``road_wheel_angle_deg``, ``standstill``, ``direction`` (0 stop,
  1 forward, 2 reverse), ``wheel_speed_{fl,fr,rl,rr}_kph``, ``odometer_km``, ``trip_km``
* driver/drivetrain: ``gear`` (0 P, 1 R, 2 N, 3 D), ``drive_mode`` (0 eco, 1 normal, 2 sport,
  3 snow), ``ready``, ``vehicle_state``, ``accel_pedal_pct``, ``brake_pedal``,
  ``brake_pressure_bar``, ``regen_level``, ``motor_rpm``, ``motor_torque_nm``,
  ``motor_torque_request_nm``, ``motor_torque_max_nm``, ``motor_torque_min_nm``,
  ``motor_power_kw``, ``motor_state``, ``motor_temp_c``, ``inverter_temp_c``,
  ``motor_coolant_temp_c``, ``max_discharge_power_kw``, ``max_regen_power_kw``,
  ``abs_active``, ``esc_active``, ``tcs_active``, ``park_brake``, ``auto_hold``, ``eps_state``
* battery: ``battery_soc_pct``, ``battery_soh_pct``, ``battery_voltage_v``, ``battery_ocv_v``,
  ``battery_current_a``, ``battery_power_kw``, ``battery_temp_c``, ``battery_temp_{min,max}_c``,
  ``battery_temp_{min,max}_idx``, ``battery_capacity_ah``, ``battery_energy_kwh``,
  ``cell_voltage_{min,max,avg}_v``, ``cell_voltage_{min,max}_idx``, ``cell_voltage_delta_mv``,
  ``cell_voltage_001_v`` … ``cell_voltage_096_v``, ``contactor_state``, ``bms_state``,
  ``max_charge_current_a``, ``max_discharge_current_a``, ``max_charge_power_kw``,
  ``battery_cooling``, ``battery_heating``, ``aux_power_kw``, ``lv_voltage_v``, ``lv_current_a``
* charging: ``charging_state`` (0 none, 1 AC, 2 DC, 3 complete), ``plug_state`` (0 unplugged,
  1 plugged, 2 plugged and locked), ``charger_power_kw``, ``charge_target_soc_pct``,
  ``time_to_full_min``, ``charge_port_door``, ``ac_voltage_v``, ``ac_current_a``, ``obc_state``
* energy: ``range_km``, ``energy_consumption_kwh_100km``, ``trip_energy_kwh``,
  ``regen_energy_kwh``
* body: ``door_{fl,fr,rl,rr}``, ``trunk``, ``hood``, ``locked``, ``low_beam``, ``high_beam``,
  ``parking_light``, ``drl``, ``light_switch``, ``turn_left``, ``turn_right``, ``hazard``,
  ``brake_light``, ``reverse_light``, ``wiper_front``, ``rain_pct``,
  ``belt_{driver,passenger,rl,rm,rr}``, ``occupied_{passenger,rl,rm,rr}``, ``ignition``,
  ``ambient_temp_c``, ``cabin_temp_c``, ``hvac_on``, ``hvac_setpoint_c``, ``hvac_fan``,
  ``hvac_ac``, ``hvac_power_kw``, ``hvac_mode``
* ADAS: ``acc_state``, ``acc_set_speed_kph``, ``acc_time_gap``, ``acc_accel_request_mps2``,
  ``lead_detected``, ``lead_distance_m``, ``lead_rel_speed_mps``, ``lka_state``,
  ``lane_left``, ``lane_right``, ``aeb_state``, ``fcw_warning``, ``aeb_decel_mps2``,
  ``time_to_collision_s``
* T-box: ``latitude_deg``, ``longitude_deg``, ``heading_deg``, ``altitude_m``,
  ``gnss_fix``, ``gnss_satellites``, ``gnss_hdop``, ``vin_char_01`` … ``vin_char_17``
  (character codes)
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping
from types import MappingProxyType

from sim.scenario import DRIVE_MODES, GEARS, Phase, Scenario

__all__ = ["CELL_COUNT", "VehicleModel"]

# --- vehicle parameters (a mid-size EV crossover) ---------------------------------------------
_MASS_KG = 1950.0
_CDA_M2 = 0.27 * 2.35
_AIR_DENSITY = 1.2
_CRR = 0.010
_G = 9.81
_WHEEL_RADIUS_M = 0.34
_GEAR_RATIO = 9.1
_WHEELBASE_M = 2.9
_TRACK_M = 1.6
_STEER_RATIO = 15.5
_STEER_RATE_DPS = 360.0
_MOTOR_TORQUE_MAX_NM = 350.0
_MOTOR_POWER_KW = {"eco": 90.0, "normal": 130.0, "sport": 160.0, "snow": 70.0}
_REGEN_TORQUE_MAX_NM = 250.0
_REGEN_POWER_MAX_KW = 70.0
_DRIVE_EFFICIENCY = 0.90  # battery ↔ wheel, motor + inverter + gearbox
_BRAKE_N_PER_BAR = 190.0  # friction brake force per bar of line pressure (≈ 100 bar at 1 g)
_ACCEL_LAG_S = 0.35

# --- battery --------------------------------------------------------------------------------
CELL_COUNT = 96
_CAPACITY_AH = 210.0  # ≈ 75 kWh at 3.7 V nominal
_R_PACK_OHM = 0.06  # ≈ 0.6 mΩ per large-format cell
_THERMAL_MASS_J_PER_K = 400_000.0  # ≈ 420 kg of cells and modules
_PASSIVE_W_PER_K = 15.0
_TEMP_SENSORS = 32
# Open-circuit voltage of one cell over SoC (NMC-like).
_OCV_SOC = (0.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 90.0, 100.0)
_OCV_V = (3.00, 3.30, 3.45, 3.55, 3.65, 3.76, 3.92, 4.03, 4.18)
_CHARGE_RAMP_KW_PER_S = 50.0
_PLUG_DELAY_S = 3.0
_HANDSHAKE_S = 2.0

_MAX_SUBSTEP_S = 0.1
_SLOW_PERIOD_S = 0.1  # refresh period of the slow quantities (cells, body, ADAS, …)


def _ocv_cell(soc: float) -> float:
    """Cell open-circuit voltage by linear interpolation of the table."""
    if soc <= _OCV_SOC[0]:
        return _OCV_V[0]
    if soc >= _OCV_SOC[-1]:
        return _OCV_V[-1]
    i = bisect.bisect_right(_OCV_SOC, soc)
    s0, s1 = _OCV_SOC[i - 1], _OCV_SOC[i]
    v0, v1 = _OCV_V[i - 1], _OCV_V[i]
    return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class VehicleModel:
    """The virtual vehicle: call :meth:`step` to advance time, read :meth:`values`.

    Deterministic for a given *scenario* and *seed* (the seed sets cell offsets, sensor noise and
    the lead vehicle's motion).
    """

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        self.scenario = scenario
        self.seed = seed
        self._rng = random.Random(f"vehicle:{seed}")
        init = scenario.initial
        self._t = 0.0
        self._v = 0.0  # m/s, magnitude (direction from the gear)
        self._a = 0.0
        self._gear = GEARS["P"]
        self._steer = 0.0
        self._steer_rate = 0.0
        self._soc = init.soc_pct
        self._soh = init.soh_pct
        self._bat_temp = init.battery_temp_c
        self._ambient = init.ambient_c
        self._cabin = init.cabin_c if init.cabin_c is not None else init.ambient_c
        self._motor_temp = init.ambient_c + 5.0
        self._coolant = init.ambient_c + 3.0
        self._odometer = init.odometer_km
        self._trip_km = 0.0
        self._trip_energy_kwh = 0.0
        self._regen_energy_kwh = 0.0
        self._current = 0.0
        self._charger_kw = 0.0
        self._locked = False
        self._contactors_closed_at: float | None = None
        self._charge_phase_start: float | None = None
        self._heading = init.heading_deg
        self._lat = init.latitude_deg
        self._lon = init.longitude_deg
        self._aeb_start: float | None = None
        self._charge_complete = False
        self._phase_index = -1
        self._phase: Phase = scenario.phases[0]
        rng = self._rng
        # Fixed manufacturing spread: cell OCV offset and resistance factor, sensor offsets.
        self._cell_offset = [rng.gauss(0.0, 0.004) for _ in range(CELL_COUNT)]
        self._cell_r_factor = [1.0 + rng.gauss(0.0, 0.05) for _ in range(CELL_COUNT)]
        self._temp_offset = [rng.gauss(0.0, 0.8) for _ in range(_TEMP_SENSORS)]
        # Per cell: (OCV offset, resistance factor − 1), the terms of its voltage.
        self._cell_terms = [
            (off, rf - 1.0) for off, rf in zip(self._cell_offset, self._cell_r_factor, strict=True)
        ]
        self._lead_phase = rng.uniform(0.0, 2.0 * math.pi)
        self._values: dict[str, float] = {}
        self._view: Mapping[str, float] = MappingProxyType(self._values)
        for i, ch in enumerate(init.vin, start=1):
            self._values[f"vin_char_{i:02d}"] = float(ord(ch))
        self._enter_phase(0.0)
        self._slow_at = 0.0
        self._update(0.0, 0.0, 0.0, 0.0, 0.0, force_slow=True)

    # ------------------------------------------------------------------------------ public API

    @property
    def time_s(self) -> float:
        """Simulated seconds since the start."""
        return self._t

    @property
    def phase(self) -> Phase:
        """The scenario phase currently active."""
        return self._phase

    @property
    def phase_index(self) -> int:
        """Index of the active phase in ``scenario.phases``."""
        return self._phase_index

    def values(self) -> Mapping[str, float]:
        """The current quantities, as a live read-only mapping (copy it to keep a snapshot)."""
        return self._view

    def step(self, dt: float) -> None:
        """Advance the simulation by *dt* seconds (split into sub-steps of at most 0.1 s)."""
        if dt < 0 or not math.isfinite(dt):
            raise ValueError(f"dt must be a finite number ≥ 0, not {dt}")
        while dt > 1e-12:
            h = min(dt, _MAX_SUBSTEP_S)
            self._substep(h)
            dt -= h

    # ------------------------------------------------------------------------------- physics

    def _enter_phase(self, t: float) -> None:
        index, phase, _elapsed = self.scenario.phase_at(t)
        if index == self._phase_index and phase is self._phase:
            return
        previous = self._phase if self._phase_index >= 0 else None
        self._phase_index = index
        self._phase = phase
        self._aeb_start = t if phase.aeb else None
        if phase.charging is None:
            self._charge_phase_start = None
            self._charger_kw = 0.0
        if previous is None or previous.charging is None:
            # A new charging session plugs in once the car stands still; consecutive charging
            # phases continue the session.
            self._charge_phase_start = None
            self._charge_complete = False

    def _substep(self, dt: float) -> None:
        self._enter_phase(self._t)
        ph = self._phase
        t = self._t
        v = self._v

        # ---- gear
        wanted_gear = self._gear
        if ph.charging is not None:
            wanted_gear = GEARS["P"]
        elif ph.gear is not None:
            wanted_gear = GEARS[ph.gear]
        elif ph.target_speed_kph > 0 and self._gear != GEARS["D"]:
            wanted_gear = GEARS["D"]  # no explicit gear: drive forwards
        if wanted_gear != self._gear and v < 0.3:
            self._gear = wanted_gear  # shift only when (nearly) stopped
        gear = self._gear
        moving_gear = gear in (GEARS["D"], GEARS["R"]) and wanted_gear == gear

        # ---- target speed and limits
        target = ph.target_speed_kph / 3.6 if moving_gear and ph.charging is None else 0.0
        accel_limit = ph.accel_limit_mps2
        decel_limit = ph.decel_limit_mps2
        aeb_state = 0.0
        fcw = 0.0
        if ph.aeb and self._aeb_start is not None:
            since = t - self._aeb_start
            if since < 0.8:
                aeb_state, fcw = 2.0, 1.0  # forward-collision warning first
            elif v > 0.05:
                aeb_state, fcw = 4.0, 1.0
                target, decel_limit = 0.0, 9.0
            else:
                aeb_state = 1.0
        elif ph.acc is not None or self._gear == GEARS["D"]:
            aeb_state = 1.0  # ready

        a_des = _clamp(0.8 * (target - v), -decel_limit, accel_limit)
        a = self._a + (a_des - self._a) * min(1.0, dt / _ACCEL_LAG_S)
        if v <= 0.0 and a <= 0.0:
            a = 0.0  # standing: the brakes hold the car

        # ---- forces
        grade = math.atan(ph.grade_pct / 100.0)
        moving = v > 0.0 or a > 0.0
        f_aero = 0.5 * _AIR_DENSITY * _CDA_M2 * v * v
        f_roll = _CRR * _MASS_KG * _G * math.cos(grade) if moving else 0.0
        f_grade = _MASS_KG * _G * math.sin(grade) if moving else 0.0
        f_resist = f_aero + f_roll + f_grade
        omega_motor = v / _WHEEL_RADIUS_M * _GEAR_RATIO
        p_max_w = _MOTOR_POWER_KW[ph.drive_mode] * 1000.0 * self._power_derate()
        t_max = min(_MOTOR_TORQUE_MAX_NM, p_max_w / max(omega_motor, 1e-3))
        regen_fade = _clamp((v * 3.6 - 2.0) / 6.0, 0.0, 1.0)
        regen_p_max_w = _REGEN_POWER_MAX_KW * 1000.0 * self._regen_derate()
        t_regen = min(_REGEN_TORQUE_MAX_NM, regen_p_max_w / max(omega_motor, 1e-3)) * regen_fade
        f_motor_max = t_max * _GEAR_RATIO / _WHEEL_RADIUS_M if moving_gear else 0.0
        f_regen_max = t_regen * _GEAR_RATIO / _WHEEL_RADIUS_M if moving_gear else 0.0
        f_required = _MASS_KG * a + f_resist
        f_friction = 0.0
        if f_required > f_motor_max:
            f_motor = f_motor_max
            a = (f_motor - f_resist) / _MASS_KG
        elif f_required >= 0.0:
            f_motor = f_required
        else:
            f_motor = max(f_required, -f_regen_max)
            f_friction = f_motor - f_required
        self._a = a

        v_new = v + a * dt
        if v_new <= 0.0:
            v_new, a = 0.0, 0.0
            self._a = 0.0
            f_motor = 0.0
        self._v = v_new
        v_avg = 0.5 * (v + v_new)

        # ---- motor and battery power
        p_mech_w = f_motor * v_avg
        p_elec_w = p_mech_w / _DRIVE_EFFICIENCY if p_mech_w >= 0 else p_mech_w * _DRIVE_EFFICIENCY
        torque = f_motor * _WHEEL_RADIUS_M / _GEAR_RATIO
        if gear == GEARS["R"]:
            torque = -torque

        # ---- charging
        plug_state = 0.0
        charging_state = 0.0
        ac_v = ac_a = 0.0
        obc_state = 0.0
        if ph.charging is not None and v_new <= 0.0 and gear == GEARS["P"]:
            if self._charge_phase_start is None:
                self._charge_phase_start = t
            since = t - self._charge_phase_start
            plug_state = 1.0 if since >= _PLUG_DELAY_S else 0.0
            is_ac = ph.charging.power_kw <= 22.0
            if since >= _PLUG_DELAY_S + _HANDSHAKE_S:
                plug_state = 2.0  # latched during charging
                if self._charge_complete or self._soc >= ph.charging.target_soc_pct:
                    self._charge_complete = True  # latched: no restart on self-discharge
                    charging_state = 3.0
                    wanted_kw = 0.0
                else:
                    charging_state = 1.0 if is_ac else 2.0
                    wanted_kw = self._charge_power_limit(ph.charging.power_kw)
                step_kw = _CHARGE_RAMP_KW_PER_S * dt
                self._charger_kw = _clamp(
                    wanted_kw, self._charger_kw - step_kw, self._charger_kw + step_kw
                )
            if is_ac:
                obc_state = 2.0 if self._charger_kw > 0 else (4.0 if charging_state == 3 else 1.0)
                if self._charger_kw > 0:
                    ac_v = 400.0
                    ac_a = self._charger_kw * 1000.0 / (math.sqrt(3) * 400.0 * 0.94)
        else:
            self._charger_kw = 0.0

        # ---- auxiliaries and climate
        hvac = ph.hvac
        hvac_power_kw = 0.0
        hvac_mode = 0.0
        if hvac is not None:
            diff = hvac.setpoint_c - self._cabin
            # Heat pump: ~0.35 kW of electrical power per °C to correct, at most 2.5 kW.
            hvac_power_kw = 0.05 * hvac.fan + min(2.5, 0.35 * abs(diff))
            if diff > 0.5:
                hvac_mode = 1.0
            elif diff < -0.5 and hvac.ac:
                hvac_mode = 2.0
            if hvac_mode == 0.0 and not hvac.ac and diff < 0:
                hvac_power_kw = 0.05 * hvac.fan
            rate = 0.004 + 0.002 * hvac.fan
            self._cabin += (
                _clamp(diff, -1.0, 1.0) * rate * dt * (1.0 if hvac_mode or diff > 0 else 0.2)
            )
        else:
            self._cabin += (self._ambient - self._cabin) * 0.0015 * dt
        driver_in = "driver" in ph.belts or v_new > 0.0
        awake = driver_in or bool(ph.doors_open) or ph.charging is not None
        base_aux_kw = 0.35 if awake else 0.03
        bat_cooling = 1.0 if self._bat_temp > 32.0 else 0.0
        bat_heating = 1.0 if self._bat_temp < 8.0 and (awake or self._charger_kw > 0) else 0.0
        aux_kw = base_aux_kw + hvac_power_kw + 0.4 * bat_cooling + 2.5 * bat_heating

        p_batt_w = p_elec_w + aux_kw * 1000.0 - self._charger_kw * 1000.0

        # ---- battery electrics
        r_pack = self._r_pack()
        ocv = _ocv_cell(self._soc) * CELL_COUNT
        disc = ocv * ocv - 4.0 * r_pack * p_batt_w
        current = (ocv - math.sqrt(disc)) / (2.0 * r_pack) if disc > 0 else ocv / (2.0 * r_pack)
        voltage = ocv - current * r_pack
        self._current = current
        capacity_ah = _CAPACITY_AH * self._soh / 100.0
        self._soc = _clamp(self._soc - current * dt / 3600.0 / capacity_ah * 100.0, 0.0, 100.0)
        heat_w = current * current * r_pack
        cool_w = _PASSIVE_W_PER_K * (self._bat_temp - self._ambient)
        cool_w += bat_cooling * min(9000.0, 800.0 * (self._bat_temp - 30.0))
        cool_w -= bat_heating * 2500.0
        self._bat_temp += (heat_w - cool_w) / _THERMAL_MASS_J_PER_K * dt
        energy_kwh = voltage * current * dt / 3.6e6
        if v_avg > 0.0:
            self._trip_energy_kwh += energy_kwh
        if p_elec_w < 0:
            self._regen_energy_kwh += -p_elec_w * dt / 3.6e6

        # ---- motor temperatures
        loss_w = 0.06 * abs(p_mech_w) + 150.0 * (1.0 if moving_gear else 0.0)
        self._motor_temp += (loss_w - 60.0 * (self._motor_temp - self._coolant)) / 25_000.0 * dt
        self._coolant += ((self._ambient + self._motor_temp) / 2.0 - self._coolant) * 0.002 * dt

        # ---- steering and yaw
        steer_target = ph.turn.steering_deg if ph.turn is not None else 0.0
        max_delta = _STEER_RATE_DPS * dt
        new_steer = _clamp(steer_target, self._steer - max_delta, self._steer + max_delta)
        self._steer_rate = (new_steer - self._steer) / dt if dt > 0 else 0.0
        self._steer = new_steer

        # ---- distance and position
        dist_m = v_avg * dt
        self._odometer += dist_m / 1000.0
        self._trip_km += dist_m / 1000.0
        self._t = t + dt
        self._update(a, torque, p_mech_w, f_friction, aux_kw)

        # Position and heading (after _update computed the yaw rate).
        yaw = self._values["yaw_rate_dps"]
        self._heading = (self._heading - yaw * dt) % 360.0  # yaw left-positive, heading clockwise
        sign = -1.0 if gear == GEARS["R"] else 1.0
        north = sign * dist_m * math.cos(math.radians(self._heading))
        east = sign * dist_m * math.sin(math.radians(self._heading))
        self._lat += north / 111_320.0
        self._lon += east / (111_320.0 * math.cos(math.radians(self._lat)))

        vals = self._values
        vals["charging_state"] = charging_state
        vals["plug_state"] = plug_state
        vals["charge_port_door"] = 1.0 if ph.charging is not None and plug_state > 0 else 0.0
        vals["ac_voltage_v"] = ac_v
        vals["ac_current_a"] = ac_a
        vals["obc_state"] = obc_state
        vals["aeb_state"] = aeb_state
        vals["fcw_warning"] = fcw
        vals["aeb_decel_mps2"] = -a if aeb_state == 4.0 else 0.0
        vals["hvac_power_kw"] = hvac_power_kw
        vals["hvac_mode"] = hvac_mode
        vals["battery_cooling"] = bat_cooling
        vals["battery_heating"] = bat_heating
        vals["latitude_deg"] = self._lat
        vals["longitude_deg"] = self._lon
        vals["heading_deg"] = self._heading
        if ph.charging is not None and self._charger_kw > 0:
            remaining_kwh = (
                max(0.0, ph.charging.target_soc_pct - self._soc)
                / 100.0
                * (capacity_ah * 3.7 * CELL_COUNT / 1000.0)
            )
            vals["time_to_full_min"] = min(1000.0, remaining_kwh / self._charger_kw * 60.0)
        else:
            vals["time_to_full_min"] = 0.0
        vals["charge_target_soc_pct"] = (
            ph.charging.target_soc_pct if ph.charging is not None else 100.0
        )

    def _power_derate(self) -> float:
        """Fraction of motor power the battery allows (cold or nearly empty packs give less)."""
        f = 1.0
        if self._bat_temp < 0.0:
            f *= _clamp(0.5 + self._bat_temp / 40.0, 0.2, 1.0)
        if self._soc < 10.0:
            f *= _clamp(self._soc / 10.0, 0.3, 1.0)
        return f

    def _regen_derate(self) -> float:
        """Fraction of regen power the battery accepts (a full or cold pack accepts less)."""
        f = 1.0
        if self._soc > 95.0:
            f *= _clamp((100.0 - self._soc) / 5.0, 0.0, 1.0)
        if self._bat_temp < 5.0:
            f *= _clamp(0.3 + (self._bat_temp + 10.0) / 21.0, 0.1, 1.0)
        return f

    def _charge_power_limit(self, requested_kw: float) -> float:
        """Charger power after the SoC taper and the cold-pack limit."""
        taper = 1.0 if self._soc <= 80.0 else max(0.05, (100.0 - self._soc) / 20.0)
        kw = requested_kw * taper
        if self._bat_temp < 10.0:
            kw = min(kw, 30.0)
        return kw

    def _r_pack(self) -> float:
        """Pack resistance, higher when cold (2 % per °C below 25 °C)."""
        return _R_PACK_OHM * (1.0 + 0.02 * max(0.0, 25.0 - self._bat_temp))

    # ------------------------------------------------------------------------- derived values

    def _update(
        self,
        a: float,
        torque: float,
        p_mech_w: float,
        f_friction: float,
        aux_kw: float,
        *,
        force_slow: bool = False,
    ) -> None:
        """Recompute the published quantities: fast ones every sub-step, the rest every 0.1 s."""
        ph = self._phase
        vals = self._values
        t = self._t
        v = self._v
        gear = self._gear
        speed_kph = v * 3.6
        rng = self._rng

        vals["time_s"] = t
        vals["speed_kph"] = speed_kph
        vals["speed_mps"] = v
        vals["accel_mps2"] = a
        vals["standstill"] = 1.0 if v <= 0.0 else 0.0
        vals["direction"] = 0.0 if v <= 0.0 else (2.0 if gear == GEARS["R"] else 1.0)
        vals["gear"] = float(gear)
        vals["drive_mode"] = float(DRIVE_MODES.index(ph.drive_mode))
        vals["odometer_km"] = self._odometer
        vals["trip_km"] = self._trip_km

        # Steering, yaw and lateral dynamics (bicycle model).
        road_wheel = self._steer / _STEER_RATIO
        sign = -1.0 if gear == GEARS["R"] else 1.0
        yaw_rad = sign * v * math.tan(math.radians(road_wheel)) / _WHEELBASE_M
        yaw_dps = math.degrees(yaw_rad)
        vals["steering_angle_deg"] = self._steer
        vals["steering_rate_dps"] = self._steer_rate
        vals["road_wheel_angle_deg"] = road_wheel
        vals["yaw_rate_dps"] = yaw_dps
        lat = v * yaw_rad
        vals["lat_accel_mps2"] = lat
        vals["vert_accel_mps2"] = 0.0
        vals["steering_torque_nm"] = _clamp(0.012 * self._steer + 0.002 * self._steer_rate, -8, 8)

        # Wheel speeds: inner wheels slower, fronts on a larger radius; small sensor noise.
        if v > 0.0:
            half = yaw_rad * _TRACK_M / 2.0
            front = 1.0 / max(0.5, math.cos(math.radians(road_wheel)))
            wheel = (
                ((v - half) * front, "fl"),
                ((v + half) * front, "fr"),
                (v - half, "rl"),
                (v + half, "rr"),
            )
            for w, name in wheel:
                vals[f"wheel_speed_{name}_kph"] = max(0.0, w * 3.6 + rng.gauss(0.0, 0.03))
        else:
            for name in ("fl", "fr", "rl", "rr"):
                vals[f"wheel_speed_{name}_kph"] = 0.0

        # Motor.
        omega = v / _WHEEL_RADIUS_M * _GEAR_RATIO
        rpm = omega * 60.0 / (2.0 * math.pi)
        vals["motor_rpm"] = -rpm if gear == GEARS["R"] else rpm
        vals["motor_torque_nm"] = torque
        vals["motor_torque_request_nm"] = torque
        p_max_w = _MOTOR_POWER_KW[ph.drive_mode] * 1000.0 * self._power_derate()
        t_max = min(_MOTOR_TORQUE_MAX_NM, p_max_w / max(omega, 1e-3))
        regen_p_w = _REGEN_POWER_MAX_KW * 1000.0 * self._regen_derate()
        t_min = -min(_REGEN_TORQUE_MAX_NM, regen_p_w / max(omega, 1e-3))
        vals["motor_torque_max_nm"] = t_max
        vals["motor_torque_min_nm"] = t_min
        vals["motor_power_kw"] = p_mech_w / 1000.0
        vals["max_discharge_power_kw"] = p_max_w / 1000.0 / _DRIVE_EFFICIENCY
        vals["max_regen_power_kw"] = regen_p_w / 1000.0
        if gear in (GEARS["P"], GEARS["N"]):
            motor_state = 1.0
        elif torque > 1.0 or (gear == GEARS["R"] and torque < -1.0):
            motor_state = 2.0
        elif abs(torque) > 1.0:
            motor_state = 3.0
        else:
            motor_state = 1.0
        vals["motor_state"] = motor_state
        vals["motor_temp_c"] = self._motor_temp
        vals["inverter_temp_c"] = self._coolant + 0.02 * abs(self._current) + 2.0
        vals["motor_coolant_temp_c"] = self._coolant
        vals["accel_pedal_pct"] = (
            0.0
            if ph.acc is not None or torque <= 0 or t_max <= 0
            else _clamp(abs(torque) / t_max * 100.0, 0.0, 100.0)
        )

        # Brakes and stability.
        holding = v <= 0.0 and gear in (GEARS["D"], GEARS["R"])
        brake_pressure = f_friction / _BRAKE_N_PER_BAR + (15.0 if holding else 0.0)
        brake_pedal = 1.0 if brake_pressure > 0.5 and ph.acc is None else 0.0
        if ph.aeb:
            brake_pedal = 0.0  # the car brakes, not the driver
        vals["brake_pressure_bar"] = brake_pressure
        vals["brake_pedal"] = brake_pedal
        regen_decel = p_mech_w < 0 and a < -1.3
        vals["brake_light"] = 1.0 if brake_pressure > 0.5 or regen_decel else 0.0
        vals["abs_active"] = 1.0 if a < -8.0 else 0.0
        vals["esc_active"] = 1.0 if abs(lat) > 6.5 else 0.0
        vals["tcs_active"] = 0.0
        vals["park_brake"] = 1.0 if gear == GEARS["P"] else 0.0
        vals["auto_hold"] = 2.0 if holding else (1.0 if gear == GEARS["D"] else 0.0)
        vals["regen_level"] = 2.0

        # Battery.
        r_pack = self._r_pack()
        ocv = _ocv_cell(self._soc) * CELL_COUNT
        current = self._current
        voltage = ocv - current * r_pack
        capacity_ah = _CAPACITY_AH * self._soh / 100.0
        vals["battery_soc_pct"] = self._soc
        vals["battery_soh_pct"] = self._soh
        vals["battery_ocv_v"] = ocv
        vals["battery_voltage_v"] = voltage
        vals["battery_current_a"] = current
        vals["battery_power_kw"] = voltage * current / 1000.0
        vals["battery_temp_c"] = self._bat_temp
        vals["battery_capacity_ah"] = capacity_ah
        energy_kwh = self._soc / 100.0 * capacity_ah * 3.7 * CELL_COUNT / 1000.0
        vals["battery_energy_kwh"] = energy_kwh
        vals["aux_power_kw"] = aux_kw
        vals["charger_power_kw"] = self._charger_kw
        if force_slow or t - self._slow_at >= _SLOW_PERIOD_S - 1e-9:
            self._slow_at = t
            self._update_slow(voltage, current, r_pack, p_max_w, energy_kwh, speed_kph, a)

    def _update_slow(
        self,
        voltage: float,
        current: float,
        r_pack: float,
        p_max_w: float,
        energy_kwh: float,
        speed_kph: float,
        a: float,
    ) -> None:
        """Quantities that change slowly or are sampled slowly by their ECUs (every 0.1 s)."""
        ph = self._phase
        vals = self._values
        t = self._t
        v = self._v
        gear = self._gear
        aux_kw = vals["aux_power_kw"]

        # Cells: pack voltage shared out, fixed offsets, resistance spread under current.
        k = current * r_pack / CELL_COUNT
        base = voltage / CELL_COUNT
        cells = [base + off - k * rf for off, rf in self._cell_terms]
        vals.update(zip(_CELL_KEYS, cells, strict=True))
        vmin = min(cells)
        vmax = max(cells)
        vals["cell_voltage_min_v"] = vmin
        vals["cell_voltage_max_v"] = vmax
        vals["cell_voltage_avg_v"] = sum(cells) / CELL_COUNT
        vals["cell_voltage_min_idx"] = float(cells.index(vmin) + 1)
        vals["cell_voltage_max_idx"] = float(cells.index(vmax) + 1)
        vals["cell_voltage_delta_mv"] = (vmax - vmin) * 1000.0
        spread = 0.002 * abs(current)  # hotter cells in the middle under load
        temps = [self._bat_temp + off * (1.0 + spread) for off in self._temp_offset]
        tmin = min(temps)
        tmax = max(temps)
        vals["battery_temp_min_c"] = tmin
        vals["battery_temp_max_c"] = tmax
        vals["battery_temp_min_idx"] = float(temps.index(tmin) + 1)
        vals["battery_temp_max_idx"] = float(temps.index(tmax) + 1)
        charge_limit_kw = self._charge_power_limit(150.0)
        vals["max_charge_power_kw"] = charge_limit_kw
        vals["max_charge_current_a"] = charge_limit_kw * 1000.0 / max(voltage, 1.0)
        vals["max_discharge_current_a"] = min(
            600.0, p_max_w / _DRIVE_EFFICIENCY / max(voltage, 1.0)
        )

        # Vehicle and power states.
        driver_in = "driver" in ph.belts or v > 0.0
        charging_phase = ph.charging is not None and v <= 0.0
        if charging_phase:
            vehicle_state = 4.0
        elif v > 0.0:
            vehicle_state = 3.0
        elif driver_in:
            vehicle_state = 2.0
        elif ph.doors_open or not self._locked:
            vehicle_state = 1.0
        else:
            vehicle_state = 0.0
        vals["vehicle_state"] = vehicle_state
        vals["ready"] = 1.0 if vehicle_state in (2.0, 3.0) else 0.0
        hv_on = vehicle_state >= 2.0
        if hv_on and self._contactors_closed_at is None:
            self._contactors_closed_at = t
        elif not hv_on:
            self._contactors_closed_at = None
        if self._contactors_closed_at is None:
            contactor = 0.0
        elif t - self._contactors_closed_at < 0.3:
            contactor = 1.0  # precharge
        else:
            contactor = 2.0
        vals["contactor_state"] = contactor
        vals["bms_state"] = 3.0 if charging_phase else (2.0 if contactor == 2.0 else 1.0)
        vals["ignition"] = 2.0 if driver_in else (1.0 if ph.doors_open else 0.0)
        vals["eps_state"] = (3.0 if ph.lane_keep else 2.0) if vals["ready"] else 0.0
        vals["lv_voltage_v"] = 14.2 if contactor == 2.0 else 12.5
        vals["lv_current_a"] = aux_kw * 1000.0 / 14.2 * 0.3 if contactor == 2.0 else 0.0

        # Energy and range.
        consumption = 16.0
        if self._trip_km > 1.0:
            consumption = _clamp(self._trip_energy_kwh / self._trip_km * 100.0, 8.0, 40.0)
        vals["energy_consumption_kwh_100km"] = consumption
        vals["trip_energy_kwh"] = max(0.0, self._trip_energy_kwh)
        vals["regen_energy_kwh"] = self._regen_energy_kwh
        vals["range_km"] = energy_kwh / consumption * 100.0

        # Body.
        doors = ph.doors_open
        for name in ("fl", "fr", "rl", "rr"):
            vals[f"door_{name}"] = 1.0 if name in doors else 0.0
        vals["trunk"] = 1.0 if "trunk" in doors else 0.0
        vals["hood"] = 1.0 if "hood" in doors else 0.0
        if ph.locked is not None:
            self._locked = ph.locked
        elif doors:
            self._locked = False
        elif speed_kph > 15.0:
            self._locked = True  # auto-lock when driving off
        vals["locked"] = 1.0 if self._locked else 0.0
        lights = ph.lights
        vals["low_beam"] = 1.0 if lights in ("low", "high") else 0.0
        vals["high_beam"] = 1.0 if lights == "high" else 0.0
        vals["parking_light"] = 1.0 if lights != "off" else 0.0
        vals["drl"] = 1.0 if lights == "off" and vals["ready"] else 0.0
        vals["light_switch"] = {"off": 0.0, "parking": 2.0, "low": 3.0, "high": 3.0}[lights]
        indicator = ph.indicator
        if indicator is None:
            indicator = "off"
            if ph.turn is not None and abs(ph.turn.steering_deg) >= 45.0:
                indicator = "left" if ph.turn.steering_deg > 0 else "right"
            if ph.aeb:
                indicator = "hazard"
        blink_on = math.fmod(t * 1.5, 1.0) < 0.5  # 1.5 Hz flasher, 50 % duty
        vals["hazard"] = 1.0 if indicator == "hazard" else 0.0
        vals["turn_left"] = 1.0 if indicator in ("left", "hazard") and blink_on else 0.0
        vals["turn_right"] = 1.0 if indicator in ("right", "hazard") and blink_on else 0.0
        vals["reverse_light"] = 1.0 if gear == GEARS["R"] else 0.0
        wiper = {"off": 0.0, "interval": 1.0, "low": 2.0, "high": 3.0}[ph.wipers]
        vals["wiper_front"] = wiper
        vals["rain_pct"] = (0.0, 20.0, 50.0, 85.0)[int(wiper)]
        for seat in ("driver", "passenger", "rl", "rm", "rr"):
            vals[f"belt_{seat}"] = 1.0 if seat in ph.belts else 0.0
            if seat != "driver":
                vals[f"occupied_{seat}"] = 1.0 if seat in ph.belts else 0.0
        vals["ambient_temp_c"] = self._ambient
        vals["cabin_temp_c"] = self._cabin
        hvac = ph.hvac
        vals["hvac_on"] = 1.0 if hvac is not None else 0.0
        vals["hvac_setpoint_c"] = hvac.setpoint_c if hvac is not None else 21.0
        vals["hvac_fan"] = float(hvac.fan) if hvac is not None else 0.0
        vals["hvac_ac"] = 1.0 if hvac is not None and hvac.ac else 0.0
        vals.setdefault("hvac_power_kw", 0.0)
        vals.setdefault("hvac_mode", 0.0)

        # ADAS.
        acc = ph.acc
        if acc is not None:
            vals["acc_state"] = 2.0
            vals["acc_set_speed_kph"] = acc.set_speed_kph
            vals["acc_time_gap"] = float(acc.time_gap - 1)
            vals["acc_accel_request_mps2"] = a
        else:
            vals["acc_state"] = 1.0 if gear == GEARS["D"] and speed_kph > 30.0 else 0.0
            vals["acc_set_speed_kph"] = 0.0
            vals["acc_time_gap"] = 1.0
            vals["acc_accel_request_mps2"] = 0.0
        lead = acc.lead_distance_m if acc is not None else None
        if lead is not None and lead > 0.0:
            w = 2.0 * math.pi / 40.0
            vals["lead_detected"] = 1.0
            vals["lead_distance_m"] = max(2.0, lead + 8.0 * math.sin(w * t + self._lead_phase))
            vals["lead_rel_speed_mps"] = 8.0 * w * math.cos(w * t + self._lead_phase)
        else:
            vals["lead_detected"] = 0.0
            vals["lead_distance_m"] = 0.0
            vals["lead_rel_speed_mps"] = 0.0
        closing = -vals["lead_rel_speed_mps"]
        vals["time_to_collision_s"] = (
            min(12.75, vals["lead_distance_m"] / closing) if closing > 0.1 else 12.75
        )
        lanes = 1.0 if ph.lane_keep or speed_kph > 60.0 else 0.0
        vals["lane_left"] = lanes
        vals["lane_right"] = lanes
        vals["lka_state"] = (2.0 if speed_kph > 60.0 else 1.0) if ph.lane_keep else 0.0
        vals.setdefault("aeb_state", 0.0)
        vals.setdefault("fcw_warning", 0.0)
        vals.setdefault("aeb_decel_mps2", 0.0)
        vals.setdefault("time_to_full_min", 0.0)
        vals.setdefault("charge_target_soc_pct", 100.0)

        # Charging defaults before the first step; the step sets the live values.
        for key in ("charging_state", "plug_state", "charge_port_door", "ac_voltage_v"):
            vals.setdefault(key, 0.0)
        vals.setdefault("ac_current_a", 0.0)
        vals.setdefault("obc_state", 0.0)
        vals.setdefault("battery_cooling", 0.0)
        vals.setdefault("battery_heating", 0.0)

        # T-box.
        vals["latitude_deg"] = self._lat
        vals["longitude_deg"] = self._lon
        vals["heading_deg"] = self._heading
        vals["altitude_m"] = 520.0
        vals["gnss_fix"] = 2.0
        vals["gnss_satellites"] = 11.0
        vals["gnss_hdop"] = 0.9


_CELL_KEYS = tuple(f"cell_voltage_{i:03d}_v" for i in range(1, CELL_COUNT + 1))
