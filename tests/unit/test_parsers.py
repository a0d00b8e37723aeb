"""Parsing `nginx -T` output and keepalived.conf (lab_tasks.parsers) for the stage 5 and 6 checks."""
from lab_tasks.parsers import keepalived
from lab_tasks.parsers import nginx as nginxconf

NGINX_T = """
# configuration file /etc/nginx/nginx.conf:
http {
    log_format up '$remote_addr $upstream_addr'
                  ' $upstream_response_time';   # the format; a ; inside a comment
    access_log /var/log/nginx/lb.log up;
    access_log off;
    include conf.d/*.conf;
}
# configuration file /etc/nginx/conf.d/upstreams.conf:
upstream app { least_conn; server 10.0.0.1:80 weight=2 max_fails=2 fail_timeout=10s; server 10.0.0.2:80 backup; }
# configuration file /etc/nginx/sites-enabled/lb.conf:
server {
    listen 80 default_server;
    listen [::]:443 ssl;
    location / { proxy_pass http://app/; proxy_next_upstream error timeout http_502; }
    location = /health { return 200 "ok;{}"; }
}
"""


def test_upstreams_and_server_options():
    root = nginxconf.parse(NGINX_T)
    upstream = nginxconf.upstreams(root)["app"]
    assert upstream.find("least_conn")
    assert nginxconf.server_options(upstream) == {
        "10.0.0.1:80": {"weight": "2", "max_fails": "2", "fail_timeout": "10s"},
        "10.0.0.2:80": {"backup": ""},
    }


def test_servers_listen_and_proxy():
    server = nginxconf.servers(nginxconf.parse(NGINX_T))[0]
    assert nginxconf.listens_on(server, 80) and nginxconf.listens_on(server, 443)
    assert not nginxconf.listens_on(server, 8081)
    assert nginxconf.proxied_upstreams(server) == {"app"}
    assert nginxconf.directive_values(server, "proxy_next_upstream") == [["error", "timeout", "http_502"]]
    assert nginxconf.directive_values(server, "return") == [["200", "ok;{}"]]


def test_log_formats_and_access_logs():
    root = nginxconf.parse(NGINX_T)
    assert nginxconf.log_formats(root) == {"up": "$remote_addr $upstream_addr $upstream_response_time"}
    assert nginxconf.access_logs(root) == [("/var/log/nginx/lb.log", "up")]


KEEPALIVED = """
! Configuration File for keepalived
vrrp_script chk_nginx {
    script "/usr/bin/curl -fsS http://127.0.0.1:8081/health"   # local check
    interval 1
    fall 2
}
vrrp_instance VI_LB {
    state BACKUP
    nopreempt
    authentication { auth_type PASS
        auth_pass s3cret }
    unicast_peer {
        10.213.7.12
    }
    track_script {
        chk_nginx
    }
}
"""


def test_keepalived_tree():
    root = keepalived.parse(KEEPALIVED)
    script, instance = root.find("vrrp_script")[0], root.find("vrrp_instance")[0]
    assert script.first_arg("script") == "/usr/bin/curl -fsS http://127.0.0.1:8081/health"
    assert script.first_arg("interval") == "1" and not script.find("rise")
    assert instance.args == ["VI_LB"] and instance.first_arg("state") == "BACKUP" and instance.find("nopreempt")
    assert instance.find("authentication")[0].first_arg("auth_pass") == "s3cret"
    assert [c.name for c in instance.find("unicast_peer")[0].children] == ["10.213.7.12"]
    assert [c.name for c in instance.find("track_script")[0].children] == ["chk_nginx"]


def test_backend_name_from_a_page():
    from lab_tasks.httpprobe import Reply

    assert Reply(200, "<h1>opslab backend app1</h1>\n").backend == "app1"
    assert Reply(200, "Welcome to nginx!").backend == ""
    assert not Reply(None, error="ConnectError").ok and Reply(204).ok


def test_keepalived_helpers():
    root = keepalived.parse(KEEPALIVED + """
vrrp_instance VI_2 {
    virtual_ipaddress {
        10.213.7.100/24 dev host0
    }
    track_script {
        chk_nginx weight -20
    }
}
""")
    first, second = keepalived.instances(root)
    assert list(keepalived.scripts(root)) == ["chk_nginx"]
    assert keepalived.tracked_scripts(first) == {"chk_nginx": []}
    assert keepalived.tracked_scripts(second) == {"chk_nginx": ["weight", "-20"]}
    assert keepalived.virtual_addresses(first) == [] and keepalived.virtual_addresses(second) == ["10.213.7.100"]


def test_keepalived_unbalanced_quote_does_not_raise():
    root = keepalived.parse('vrrp_script x {\n    script "/bin/check\n}\n')
    assert root.find("vrrp_script")[0].first_arg("script") == '"/bin/check'


def test_effective_follows_inheritance_not_search():
    root = nginxconf.parse("""
http {
    proxy_next_upstream error;
    server {
        listen 80;
        location / { proxy_pass http://app; }
        location /api { proxy_pass http://app; proxy_next_upstream off; }
    }
}""")
    server = nginxconf.servers(root)[0]
    root_location, api = nginxconf.proxying_locations(server, "app")
    assert nginxconf.effective(root, root_location, "proxy_next_upstream") == ["error"]
    assert nginxconf.effective(root, api, "proxy_next_upstream") == ["off"]
    assert nginxconf.effective(root, api, "proxy_next_upstream_tries") is None
    assert nginxconf.path_to(root, api) == [root, root.children[0], server]


def test_seconds():
    assert [nginxconf.seconds(v) for v in ("10", "10s", "1m30s", "500ms", "2h")] == [10, 10, 90, 0.5, 7200]
    assert nginxconf.seconds("ten") is None and nginxconf.seconds("10x") is None


def test_balancing_site_and_its_upstream_hosts():
    root = nginxconf.parse(NGINX_T)
    server, upstream = nginxconf.balancing_site(root, 80)
    assert upstream.args == ["app"] and nginxconf.listens_on(server, 80)
    assert nginxconf.upstream_hosts(upstream) == {"10.0.0.1", "10.0.0.2"}
    assert nginxconf.balancing_site(root, 8081) is None
