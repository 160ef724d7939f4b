"""Runner pieces that need no deployment: the survival verdict and surplus credits."""

from experiments.cost import surplus_credits_per_hour
from experiments.load.survival import first_worker_loss_s, with_worker_loss
from experiments.model import LogLine, Observations, SignalSample, SurvivalResult

T0 = 1_000_000.0
SIGKILL = ("[2026-11-25 10:00:21 +0000] [10] [ERROR] Worker (pid:12) was sent SIGKILL! "
           "Perhaps out of memory?")


def held(limit: float = 40.0) -> SurvivalResult:
    timeline = [{"t": float(i), "requests": 5, "errors": 0, "p95_ms": 100.0}
                for i in range(1, int(limit) + 1)]
    return SurvivalResult(seconds=limit, held=True, limit_s=limit, started_at=T0,
                          timeline=timeline)


def test_a_lost_worker_ends_survival_even_when_clients_saw_it_hold() -> None:
    logs = [LogLine(T0 - 5, "gunicorn:i0", SIGKILL),  # during the capacity search: not counted
            LogLine(T0 + 21.2, "gunicorn:i0", "[INFO] Booting worker with pid: 13"),
            LogLine(T0 + 21.0, "gunicorn:i0", SIGKILL)]
    result = with_worker_loss(held(), Observations(logs=logs))
    assert not result.held
    assert result.seconds == 21.0 and result.failed_at == T0 + 21.0
    assert "lost a worker" in result.reason and "SIGKILL" in result.reason
    assert "clients saw it hold" in result.reason


def test_an_earlier_client_failure_stands() -> None:
    survival = SurvivalResult(seconds=5.0, held=False, limit_s=40.0, started_at=T0,
                              failed_at=T0 + 5, reason="error rate 90% over 5 s",
                              timeline=[{"t": 10.0}])
    logs = [LogLine(T0 + 8, "gunicorn:i0", "[CRITICAL] WORKER TIMEOUT (pid:12)")]
    assert with_worker_loss(survival, Observations(logs=logs)) is survival
    assert first_worker_loss_s(survival, Observations(logs=logs)) == 8.0


def test_no_loss_keeps_the_verdict() -> None:
    survival = held()
    quiet = Observations(logs=[LogLine(T0 + 3, "gunicorn:i0", "[INFO] Booting worker")])
    assert with_worker_loss(survival, quiet) is survival


def test_surplus_credits_per_hour_from_cumulative_counters() -> None:
    samples = [SignalSample(t=T0 + s, instance=i, surplus_credits=c)
               for i, series in (("a", [(0, 1.0), (1800, 2.0)]), ("b", [(0, 0.0), (1800, 0.5)]))
               for s, c in series]
    assert surplus_credits_per_hour(Observations(signals=samples)) == 3.0
    assert surplus_credits_per_hour(Observations()) == 0.0
