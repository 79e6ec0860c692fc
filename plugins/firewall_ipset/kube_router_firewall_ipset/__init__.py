"""NetworkPolicy enforcement with iptables and ipset: the ``firewall`` plugin."""
