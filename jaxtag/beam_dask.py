"""jaxtag's DaskRunner: Beam's DaskRunner (apache_beam.runners.dask), with what jaxtag's two
pipelines need of it. Named `runner=dask` in --beam_pipeline_options (jaxtag.beam), with Beam's
own options: `dask_client_address=tcp://HOST:8786` or `dask_scheduler_file=FILE` (without either,
Dask starts a LocalCluster on this machine).

Beam 2.78's DaskRunner turns the pipeline into Dask bags, and on jaxtag's pipelines it falls short
in four ways (1-3 seen with a scheduler and two workers on this machine, 4 read in its code):

1. It computes only the last transform's bag: every other sink (TFDS's other splits and their
   split info; a second output of a tagging run) never runs.
2. A ParDo's tagged outputs (`with_outputs`) are not told apart: every consumer gets all of them
   mixed (how tagging came to fail with a TypeError).
3. `Reshuffle` is a no-op and `Create` makes partitions of 128 elements, so a list of files is one
   task on one worker.
4. Side inputs are computed inside the consuming tasks, once per bundle (a nested computation of
   everything upstream of them, unless its results happen to be still on the cluster).

Here: every PCollection that nothing reads is computed (all sinks, in one graph); each tagged
output is a bag of its own (the DoFn runs once per partition: the outputs share it); `Reshuffle`
splits its input into one partition per element (up to MAX_RESHUFFLE_PARTITIONS), scattered
over the workers in turn, so that each starts with its share; and a side input is computed once, on the cluster,
before the graph that reads it (the collections upstream of it that other transforms read too are
kept on the cluster, `persist`, so that they are not computed twice). Everything else is Beam's:
its translations of Create, GroupByKey and Flatten, its DoFn invoker, its options. Windows and
timestamps are those of Beam's runner (the global window); metrics are not collected (Beam's
runner does not either).
"""
from __future__ import annotations

import collections
import typing as t

from apache_beam import ParDo, pvalue
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import overrides
from apache_beam.runners.common import Receiver
from apache_beam.runners.dask import transform_evaluator as te

# A Reshuffle of more elements than this gives partitions of several elements each.
MAX_RESHUFFLE_PARTITIONS = 10_000
# How long the driver waits for a side input (seconds).
SIDE_INPUT_TIMEOUT = 24 * 3600


class _Receivers(dict):
    """The DoFn's receivers: every output as (tag, value), tag None for the main one."""

    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        self[tag] = receiver = _Receiver(tag, self.out)
        return receiver


class _Receiver(Receiver):
    def __init__(self, tag, out: list):
        super().__init__()
        self.tag, self.out = tag, out

    def receive(self, windowed_value):
        self.out.append((self.tag, te.defenestrate(windowed_value)))


def _run_bundle(items, fn, window_fn, label, args, kwargs, side_inputs):
    """One partition through a DoFn (set up, one bundle, torn down), as Beam's runner does, with
    the outputs kept apart by tag."""
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    invoker = DoFnInvoker.create_invoker(DoFnSignature(fn), handler, context=DoFnContext(label, state=None),
                                         side_inputs=side_inputs, input_args=args, input_kwargs=kwargs,
                                         user_state_context=None, bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(te.get_windowed_value(item, window_fn))
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return out


def _of_tag(part, tag):
    return [value for found, value in part if found == tag]


def _drain(part):
    for _ in part:
        pass
    return []


class _Visitor(PipelineVisitor):
    """Builds one Dask bag per PCollection."""

    def __init__(self, client, bag_kwargs: dict, consumers: dict):
        self.client, self.bag_kwargs, self.consumers = client, bag_kwargs, consumers
        self.bags: dict = {}           # PCollection -> bag
        self.created: dict = {}        # PCollection -> its elements, where known (a Create's)
        self.parents: dict = {}        # PCollection -> the PCollections its transform read
        self.kept: list = []           # persisted bags (their results stay on the cluster while held)
        self.persisted: set = set()

    def visit_transform(self, node) -> None:
        transform = node.transform
        inputs = [i for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        bags = [self.bags[i] for i in inputs]
        for output in node.outputs.values():
            self.parents[output] = inputs + [si.pvalue for si in node.side_inputs]
        kind = transform.__class__
        if kind is overrides._Create:
            # (Beam's default partition size, given, so that Beam does not warn of it at every Create.)
            given = self.bag_kwargs if set(self.bag_kwargs) & {"npartitions", "partition_size"} else \
                {**self.bag_kwargs, "partition_size": 128}
            bag = te.Create(node, bag_kwargs=given).apply(None)
            self._set(node, bag)
            self.created[node.outputs[None]] = transform.values
        elif kind is overrides._Reshuffle:
            self._set(node, self._reshuffle(bags[0], self.created.get(inputs[0])))
        elif kind is overrides._Flatten:
            self._set(node, te.Flatten(node).apply(bags))
        elif kind is overrides._GroupByKeyOnly:
            self._set(node, te.GroupByKey(node).apply(bags[0]))
        elif kind is overrides._Read:
            raise NotImplementedError(f"{node.full_label}: jaxtag's DaskRunner does not read Beam sources")
        elif kind is ParDo:
            self._pardo(node, bags[0])
        else:       # as Beam's runner: WindowInto, the window regrouping after a GroupByKey, ...
            self._set(node, bags[0] if len(bags) == 1 else te.Flatten(node).apply(bags))

    def _set(self, node, bag) -> None:
        for output in node.outputs.values():
            self.bags[output] = bag

    def _reshuffle(self, bag, created):
        """One partition per element (or per few, past MAX_RESHUFFLE_PARTITIONS) of a Create's
        elements, scattered over the workers in turn (client.scatter): the tasks that read a
        partition run where it is, so every worker starts with its share (left to the scheduler,
        a worker busy loading the model could leave the other one file of five); else at least
        two partitions per worker thread."""
        if created is not None:
            if not created:
                return bag
            import dask.bag as db
            n = min(len(created), MAX_RESHUFFLE_PARTITIONS)
            size = -(-len(created) // n)
            futures = self.client.scatter([list(created[i:i + size]) for i in range(0, len(created), size)])
            self.kept.append(futures)   # (held until the pipeline is done)
            return db.from_delayed(futures)
        target = 2 * sum(self.client.nthreads().values())
        return bag if target <= bag.npartitions else bag.repartition(npartitions=target)

    def _pardo(self, node, bag) -> None:
        transform = node.transform
        args, kwargs = transform.raw_side_inputs
        main = next(iter(node.main_inputs.values()))
        window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
        sides = [self._side_input(si) for si in node.side_inputs]
        tagged = bag.map_partitions(_run_bundle, transform.fn, window_fn, transform.label, list(args), kwargs,
                                    sides or None)
        for tag, output in node.outputs.items():
            self.bags[output] = tagged.map_partitions(_of_tag, tag)

    def _side_input(self, si):
        """A side input's values, computed on the cluster now; what it is computed from and other
        transforms read too is persisted first, so that the graph computed later reuses it."""
        from apache_beam.transforms.sideinputs import SideInputMap
        for pcoll in self._shared_ancestors(si.pvalue):
            self.kept.append(self.client.persist(self.bags[pcoll]))
            self.persisted.add(pcoll)
        values = self.client.compute(self.bags[si.pvalue]).result(timeout=SIDE_INPUT_TIMEOUT)
        windowed = [te.get_windowed_value(v, None) for v in values]
        return SideInputMap(type(si), si._view_options(), windowed)

    def _shared_ancestors(self, start) -> list:
        seen, todo, shared = set(), [start], []
        while todo:
            pcoll = todo.pop()
            if pcoll in seen:
                continue
            seen.add(pcoll)
            if self.consumers.get(pcoll, 0) > 1 and pcoll not in self.persisted:
                shared.append(pcoll)
            todo += self.parents.get(pcoll, [])
        return shared

    def sinks(self) -> list:
        """The bags of the PCollections nothing reads, each drained on the workers (nothing comes
        back to the driver)."""
        unread = [p for p in self.bags if not self.consumers.get(p)]
        return [bag.map_partitions(_drain) for bag in {id(self.bags[p]): self.bags[p] for p in unread}.values()]


class _Consumers(PipelineVisitor):
    def __init__(self):
        self.count: dict = collections.Counter()

    def visit_transform(self, node) -> None:
        for i in node.inputs:
            if not isinstance(i, pvalue.PBegin):
                self.count[i] += 1
        for si in node.side_inputs:
            self.count[si.pvalue] += 1


class DaskRunnerResult(beam_dask.DaskRunnerResult):
    """Beam's result; the client is closed once the pipeline is done (or failed)."""
    kept: t.Sequence = ()

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self._state in (beam_dask.PipelineState.DONE, beam_dask.PipelineState.FAILED):
                self.kept = ()
                self.client.close()


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner, computing every sink, with tagged outputs, Reshuffle and side inputs
    (see the module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist
        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        dask_options.pop("lazy_side_inputs", None)      # side inputs are computed once, before their readers
        pipeline.replace_all(overrides.dask_overrides())
        consumers = _Consumers()
        pipeline.visit(consumers)
        client = ddist.Client(**dask_options)
        try:
            visitor = _Visitor(client, bag_kwargs, consumers.count)
            pipeline.visit(visitor)
            futures = client.compute(list(dask.optimize(*visitor.sinks())))
        except BaseException:
            client.close()
            raise
        result = DaskRunnerResult(client, futures)
        result.kept = visitor.kept
        return result


def stop_processes(started: list) -> None:
    """Stop a local Dask cluster's processes, [(Popen, log file)] with the scheduler first: the
    workers first (SIGTERM to all at once), then the scheduler (a worker whose scheduler is gone
    waits for it); SIGKILL to any process still there 30 s later. (The test's and the benchmark's
    clusters.)"""
    import subprocess
    for group in (started[1:], started[:1]):
        for proc, _ in group:
            if proc.poll() is None:
                proc.terminate()
        for proc, log in group:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            log.close()
