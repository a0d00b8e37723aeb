"""`lab bench`: the bundled load test. inference.bench (httpx, numpy, matplotlib; never torch) loads only when run."""
import click

FORWARD_EVERYTHING = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.command("bench", context_settings=FORWARD_EVERYTHING, add_help_option=False)
@click.pass_context
def command(ctx: click.Context) -> None:
    """Load-test OpenAI-compatible endpoints with vLLM's metrics (`lab bench --help` lists the options)."""
    from inference.bench.cli import bench

    bench.main(args=ctx.args, prog_name="lab bench", standalone_mode=False)
