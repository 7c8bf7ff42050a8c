"""One actor per live instance: a mailbox, one message at a time, commit before emit."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs

from saga._core import messages as msg
from saga._core.codec import check_payload, dumps
from saga._core.context import StepContext
from saga._core.decide import Decision, decide, idempotency_key, outstanding, wake_at
from saga._core.definition import ChildSaga, ContinueAsNew, SagaDefinition
from saga._core.effects import (
    AbortAttempt,
    ArmTimer,
    CancelChild,
    Effect,
    Finish,
    RunAttempt,
    StartChild,
    StartNext,
)
from saga._core.events import ErrorInfo, ParentRef, Phase
from saga._core.snapshot import fingerprint
from saga._core.state import SagaState, Status
from saga._crashpoints import crashpoint
from saga._runtime.clock import Clock
from saga._runtime.history import snapshot_for, transition
from saga._runtime.hooks import SimulatedCrash
from saga._runtime.ownership import OK, encode_reply
from saga._store.port import Reply
from saga.errors import (
    CoordinatorError,
    NonRetryableError,
    PayloadError,
    SagaError,
    StepTimeoutError,
    StoreError,
)

if TYPE_CHECKING:
    from saga._runtime.coordinator import Coordinator

__all__ = ["Actor", "Envelope", "Moved"]

log = logging.getLogger("saga")

MAILBOX_SIZE = 64


class Moved(CoordinatorError):
    """The actor stopped before handling a command: ask wherever the instance is now."""


@attrs.define(eq=False)
class Envelope:
    """A message, and for commands a place for the caller to hear the outcome.

    A command from another coordinator carries its inbox ``message_id`` instead: its
    answer goes to the store, with the transition it causes.
    """

    message: msg.Message
    replied: anyio.Event | None = None
    error: Exception | None = None
    message_id: str | None = None

    def reply(self, error: Exception | None = None) -> None:
        if self.replied is not None and not self.replied.is_set():
            self.error = error
            self.replied.set()


@attrs.define(eq=False)
class _Pending:
    """An attempt a runner holds: it can be aborted until it begins."""

    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    began: bool = False


class Actor:
    """Drives one instance. Its mailbox outlives crashes; each incarnation is one ``run``."""

    def __init__(
        self, coordinator: Coordinator, saga_id: str, definition: SagaDefinition, epoch: int
    ) -> None:
        self.coordinator = coordinator
        self.saga_id = saga_id
        self.definition = definition
        #: The epoch of our lease on the instance: every commit carries it.
        self.epoch = epoch
        #: Set when the lease passed to another owner: the actor stops and is not restarted.
        self.lost = False
        #: Set when it stopped for want of anything to do (see ``Coordinator.passivate_after``).
        self.passivated = False
        self.scope = anyio.CancelScope()  # around every incarnation: lose() cancels it
        #: Our clock when the lease was taken (about: just after the store said so).
        self.leased_at = anyio.current_time()
        self.send, self._receive = anyio.create_memory_object_stream[Envelope](MAILBOX_SIZE)
        self.state: SagaState | None = None
        #: The instance's latest snapshot vouches for another definition than ours: the
        #: next commit carries one (see ``Coordinator._load``).
        self._stale_snapshot = False
        self._seen: set[str] = set()  # inbox messages handled, across incarnations
        self._attempts: dict[tuple[Phase, str, int], _Pending] = {}
        self._runners = 0  # attempt runners alive, begun or not
        self._children = anyio.Lock()  # child starts and cancels, one at a time

    @property
    def done(self) -> bool:
        """Nothing more will happen here: terminal, or parked for an operator."""
        return self.state is not None and (
            self.state.status.terminal or self.state.status is Status.SUSPENDED
        )

    def lose(self) -> None:
        """The instance is someone else's now: stop at once, for good."""
        self.lost = True
        self.scope.cancel()

    async def run(self, boot: Decision | None) -> None:
        """One incarnation: rebuild (unless booted), re-issue work, then handle messages.

        Returns when the instance is done; any exception is the supervisor's to handle.
        Attempt runners live in this incarnation's task group and die with it.
        """
        async with anyio.create_task_group() as tg:
            if boot is None:
                # Checked against the definition we drive it with: a history it does not
                # fit raises NonDeterminismError, and the supervisor parks the instance.
                self.state, latest = await self.coordinator._load(self.saga_id, self.definition)
                self._stale_snapshot = latest is not None and latest != fingerprint(self.definition)
                now = self.coordinator.clock.now()
                effects: tuple[Effect, ...] = outstanding(self.definition, self.state, now)
                crashpoint("recovery_loaded")
            else:
                self.state, effects = boot.state, boot.effects
                self._stale_snapshot = False  # a new instance: no snapshot, or one of ours
            self._emit(tg, effects)
            while not self.done:
                envelope = await self._next()
                if envelope is None:  # nothing to do for a while: leave memory
                    self.passivated = True
                    tg.cancel_scope.cancel()  # timers and backoffs: the store has them
                    break
                try:
                    await self._handle(tg, envelope)
                except BaseException as exc:
                    if envelope.message_id is not None:  # unanswered: the next owner's
                        self.coordinator._keeper.delivered.discard(envelope.message_id)
                    stopped = Moved("the actor stopped before the command was recorded")
                    envelope.reply(exc if isinstance(exc, Exception) else stopped)
                    raise
            if self._runners:  # stale runners have nothing left to report to
                tg.cancel_scope.cancel()

    async def _next(self) -> Envelope | None:
        """The next message; ``None`` once the actor was idle for ``passivate_after``.

        Idle: no attempt has begun, nothing is due, the mailbox is empty. What it still
        waits for (timers, backoffs, signals) is in the store, with its wake-up time.
        """
        after = self.coordinator.passivate_after
        clock = self.coordinator.clock
        while True:
            if after is None or not self._idle(clock.now()):
                return await self._receive.receive()
            with clock.move_on_at(clock.now() + after):
                return await self._receive.receive()
            if self._idle(clock.now()):  # (an attempt may have begun meanwhile)
                return None

    def _idle(self, now: float) -> bool:
        state = self.state
        if state is None or self._runners != len(self._attempts):
            return False  # a runner is reporting
        if self._receive.statistics().current_buffer_used:
            return False  # a message waits
        if any(pending.began for pending in self._attempts.values()):
            return False
        wake = wake_at(self.definition, state, now)
        return wake is None or wake > now

    def close(self) -> None:
        """Close the mailbox; commands still queued are sent to ask elsewhere."""
        self.send.close()
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                self._receive.close()
                return
            if envelope.message_id is not None:  # still in the inbox for the next owner
                self.coordinator._keeper.delivered.discard(envelope.message_id)
            envelope.reply(Moved("the instance stopped running here before handling it"))

    async def _handle(self, tg: anyio.abc.TaskGroup, envelope: Envelope) -> None:
        state = self.state
        assert state is not None
        coordinator = self.coordinator
        message_id = envelope.message_id
        if message_id is not None and message_id in self._seen:
            return  # delivered twice; answered the first time
        now = coordinator.clock.now()
        try:
            decision = decide(self.definition, state, envelope.message, now)
        except SagaError as exc:  # a command that does not apply: the caller hears why
            if message_id is not None:
                await self._answer(message_id, exc)
            envelope.reply(exc)
            return
        if decision.events:
            # Past the limit nothing is written: the supervisor parks the instance.
            coordinator.limits.check_events(self.saga_id, state.sequence, decision.state.sequence)
            replies = () if message_id is None else (Reply(message_id=message_id, body=OK),)
            snapshot = snapshot_for(
                self.definition,
                state.sequence,
                decision.state,
                every=coordinator.snapshot_every,
                stale=self._stale_snapshot,
            )
            # Shielded: once handed to the store the commit may land, so the actor waits to
            # hear whether it did; a caller is never told "done" for what was not written.
            with anyio.CancelScope(shield=True):
                await coordinator._commit(
                    transition(
                        self.definition,
                        state.sequence,
                        decision,
                        at=now,
                        epoch=self.epoch,
                        replies=replies,
                        snapshot=snapshot,
                    )
                )
            if snapshot is not None:
                self._stale_snapshot = False
            crashpoint("after_commit")
            if message_id is not None:
                self._answered(message_id)
        elif message_id is not None:
            await self._answer(message_id, None)
        self.state = decision.state
        envelope.reply()
        self._emit(tg, decision.effects)

    async def _answer(self, message_id: str, error: Exception | None) -> None:
        """Answer an inbox command that changed nothing (no transition to carry it)."""
        with anyio.CancelScope(shield=True):
            await self.coordinator.store.answer(
                [Reply(message_id=message_id, body=encode_reply(error))]
            )
        self._answered(message_id)

    def _answered(self, message_id: str) -> None:
        self._seen.add(message_id)
        self.coordinator._keeper.delivered.discard(message_id)

    def _emit(self, tg: anyio.abc.TaskGroup, effects: tuple[Effect, ...]) -> None:
        for effect in effects:
            match effect:
                case RunAttempt():
                    pending = _Pending()
                    self._attempts[(effect.phase, effect.step, effect.attempt)] = pending
                    self._runners += 1
                    tg.start_soon(self._attempt, effect, pending)
                case ArmTimer():
                    pending = _Pending()
                    self._attempts[(Phase.ACTION, effect.step, effect.attempt)] = pending
                    self._runners += 1
                    tg.start_soon(self._timer, effect, pending)
                case AbortAttempt(phase=phase, step=step, attempt=n):
                    held = self._attempts.get((phase, step, n))
                    if held is not None and not held.began:
                        held.scope.cancel()
                case StartChild() | StartNext() | CancelChild():
                    self._runners += 1
                    tg.start_soon(self._child, effect)
                case Finish():
                    self.coordinator._settled(self.saga_id, self.state)

    async def _child(self, effect: StartChild | StartNext | CancelChild) -> None:
        """Start or cancel a child saga, one at a time per parent: a cancel issued while
        its child is being started waits for that start, so no child starts after its
        cancel and escapes it."""
        try:
            outcome: msg.Message | None = None
            async with self._children:
                if isinstance(effect, StartChild):
                    outcome = await self._start_child(effect)
                elif isinstance(effect, StartNext):
                    outcome = await self._start_next(effect)
                else:
                    await self.coordinator._cancel_child(effect.child_id, effect.reason)
                    outcome = msg.ChildCancelDelivered(child_id=effect.child_id)
            if outcome is not None:
                await self.send.send(Envelope(outcome))
        finally:
            self._runners -= 1

    def _context(
        self, state: SagaState, step: str, phase: Phase, attempt: int, key: str
    ) -> StepContext:
        return StepContext(
            saga_id=self.saga_id,
            saga=self.definition.name,
            step=step,
            phase=phase,
            attempt=attempt,
            idempotency_key=key,
            input=state.input,
            results=dict(state.results),
        )

    async def _start_next(self, effect: StartNext) -> msg.Message | None:
        """Start the next run of a saga that continues as new, or end its loop."""
        state = self.state
        assert state is not None
        attempt = state.attempt(Phase.ACTION, effect.step)
        if (
            state.status is not Status.RUNNING
            or attempt is None
            or attempt.attempt != effect.attempt
        ):
            return None  # cancelled before the next run started: it never will
        again = self.definition.step(effect.step).wait
        assert isinstance(again, ContinueAsNew)
        ctx = self._context(
            state,
            effect.step,
            Phase.ACTION,
            effect.attempt,
            idempotency_key(self.saga_id, effect.step, Phase.ACTION),
        )
        try:
            if again.until is not None and again.until(ctx):
                return msg.CompleteAttempt(
                    phase=Phase.ACTION,
                    step=effect.step,
                    attempt=effect.attempt,
                    result={"continued_as": None},
                )
            next_input = state.input if again.input is None else again.input(ctx)
            coordinator = self.coordinator
            await coordinator._start(
                coordinator.definition(self.definition.name), effect.next_id, next_input
            )
        except StoreError:
            raise  # a crash: the rebuilt actor starts it again (a no-op if it landed)
        except Exception as exc:  # noqa: BLE001 - its functions, or a conflicting id
            log.warning("saga %s: next run not started: %r", self.saga_id, exc)
            return msg.FailAttempt(
                phase=Phase.ACTION,
                step=effect.step,
                attempt=effect.attempt,
                error=ErrorInfo.of(exc),
                retryable=False,
            )
        return msg.NextStarted(step=effect.step, next_id=effect.next_id)

    async def _start_child(self, effect: StartChild) -> msg.Message | None:
        state = self.state
        assert state is not None
        attempt = state.attempt(Phase.ACTION, effect.step)
        if (
            state.status is not Status.RUNNING
            or attempt is None
            or attempt.attempt != effect.attempt
        ):
            return None  # its wait ended (cancelled) before the child started: it never will
        step = self.definition.step(effect.step)
        child = step.wait
        assert isinstance(child, ChildSaga)
        ctx = self._context(
            state,
            step.name,
            Phase.ACTION,
            effect.attempt,
            idempotency_key(self.saga_id, step.name, Phase.ACTION),
        )
        try:
            child_input = state.input if child.input is None else child.input(ctx)
            await self.coordinator._start(
                self.coordinator.definition(child.saga),
                effect.child_id,
                child_input,
                parent=ParentRef(saga_id=self.saga_id, step=step.name),
            )
        except StoreError:
            raise  # a crash: the rebuilt actor starts it again (a no-op if it landed)
        except Exception as exc:  # noqa: BLE001 - its input function, or a conflicting id
            log.warning("saga %s: child %s not started: %r", self.saga_id, effect.child_id, exc)
            return msg.FailAttempt(
                phase=Phase.ACTION,
                step=step.name,
                attempt=effect.attempt,
                error=ErrorInfo.of(exc),
                retryable=False,
            )
        return None  # its end comes as a message (written with the child's last commit)

    async def _timer(self, effect: ArmTimer, pending: _Pending) -> None:
        """Report ``FireTimer`` at the timer's time, unless the wait ends before."""
        fired = False
        try:
            try:
                with pending.scope:
                    await self.coordinator.clock.sleep_until(effect.at)
                    crashpoint("timer_fired")
                    fired = True
            finally:
                self._attempts.pop((Phase.ACTION, effect.step, effect.attempt), None)
            if fired:
                message = msg.FireTimer(step=effect.step, attempt=effect.attempt)
                await self.send.send(Envelope(message))
        finally:
            self._runners -= 1  # after the send: until then the actor is not idle

    async def _attempt(self, effect: RunAttempt, pending: _Pending) -> None:
        """Run one attempt and report its outcome to the mailbox."""
        try:
            await self._run_attempt(effect, pending)
        finally:
            self._runners -= 1

    async def _run_attempt(self, effect: RunAttempt, pending: _Pending) -> None:
        outcome: msg.Message | None = None
        try:
            with pending.scope:
                if effect.run_after is not None:
                    await self.coordinator.clock.sleep_until(effect.run_after)
                    crashpoint("backoff_elapsed")
                async with self.coordinator.limiter:
                    pending.began = True
                    outcome = await self._call(effect)
                    crashpoint(
                        "compensation_done"
                        if effect.phase is Phase.COMPENSATION
                        else "step_effect_done"
                    )
        finally:
            self._attempts.pop((effect.phase, effect.step, effect.attempt), None)
        if outcome is None:  # aborted before it began
            outcome = msg.FailAttempt(
                phase=effect.phase,
                step=effect.step,
                attempt=effect.attempt,
                error=ErrorInfo("saga.Aborted", "dropped before it began: the saga was cancelled"),
                retryable=False,
            )
        envelope = Envelope(outcome)
        try:
            self.send.send_nowait(envelope)  # no checkpoint needed: the runner ends here
        except anyio.WouldBlock:
            await self.send.send(envelope)

    async def _call(self, effect: RunAttempt) -> msg.Message:
        state = self.state
        assert state is not None
        step = self.definition.step(effect.step)
        compensating = effect.phase is Phase.COMPENSATION
        fn = step.compensation if compensating else step.action
        policy = step.compensation_retry if compensating else step.action_policy
        assert fn is not None
        ctx = self._context(state, step.name, effect.phase, effect.attempt, effect.idempotency_key)
        hook = self.coordinator.step_hook
        if hook is not None:
            fn = hook.wrap(self.definition, step, ctx, fn)
        clock = self.coordinator.clock
        try:
            if compensating:
                # A compensation that has begun runs to its end (or its timeout) even while
                # the coordinator shuts down: half an undo is the worst state to leave.
                crashpoint("compensation_started")
                with anyio.CancelScope(shield=True):
                    result = await _timed(fn, ctx, step.timeout, clock)
            else:
                result = await _timed(fn, ctx, step.timeout, clock)
            path = f"result of {effect.phase.value} {step.name!r}"
            result = check_payload(result, path)
            self.coordinator.limits.check_payload(dumps(result), path, saga_id=self.saga_id)
        except (anyio.get_cancelled_exc_class(), SimulatedCrash):
            raise
        except Exception as exc:  # noqa: BLE001 - the step's own failure, recorded as data
            # A result with no JSON form will not get one by trying again.
            retryable = not isinstance(
                exc, (*policy.non_retryable, PayloadError, NonRetryableError)
            )
            log.info(
                "saga %s: %s of %s, attempt %d, failed: %r",
                self.saga_id,
                effect.phase.value,
                step.name,
                effect.attempt,
                exc,
            )
            return msg.FailAttempt(
                phase=effect.phase,
                step=effect.step,
                attempt=effect.attempt,
                error=ErrorInfo.of(exc),
                retryable=retryable,
            )
        return msg.CompleteAttempt(
            phase=effect.phase, step=effect.step, attempt=effect.attempt, result=result
        )


async def _timed(
    fn: Callable[[StepContext], Awaitable[Any]],
    ctx: StepContext,
    timeout: float | None,
    clock: Clock,
) -> Any:
    if timeout is None:
        return await fn(ctx)
    with clock.move_on_at(clock.now() + timeout):
        return await fn(ctx)
    raise StepTimeoutError(ctx.saga_id, step=ctx.step, attempt=ctx.attempt, timeout=timeout)
