"""Links: the ways nodes reach the gateway, all behind `links.base.Link`."""
