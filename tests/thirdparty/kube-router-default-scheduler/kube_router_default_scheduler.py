"""A cluster-wide default IPVS scheduler, for Services whose annotations choose none."""

from kube_router import hookimpl
from kube_router_proxy_ipvs.api import IPVSScheduler


@hookimpl
def kube_router_add_options(parser):
    group = parser.add_argument_group("default-scheduler")
    group.add_argument("--default-ipvs-scheduler", metavar="NAME",
                       help="scheduler for Services that do not choose one")


# trylast: a Service's own annotation (another plugin's answer) wins over this default.
@hookimpl(trylast=True, optionalhook=True)
def kube_router_ipvs_scheduler(service, config):
    name = config.default_ipvs_scheduler
    return IPVSScheduler(name=name) if name else None
