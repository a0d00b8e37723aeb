#!/usr/bin/perl
# opslab web: a tiny HTTP server on perl-base alone (the lab's base image has no python).
# GET / -> the rendered page, GET /health -> ok, GET /boots -> one line per container start.
use strict;
use warnings;
use IO::Socket::INET;

my $port = $ENV{PORT} || 8080;
my $data = $ENV{DATA_DIR} || '/data';
my $root = '/srv/web';

sub slurp { my ($path) = @_; open(my $fh, '<', $path) or return undef; local $/; return <$fh>; }

sub record_boot {
    open(my $fh, '>>', "$data/boots") or die "cannot write $data/boots: $!\n";
    chomp(my $host = slurp('/etc/hostname') // 'unknown');
    print $fh "$host " . time() . "\n";
    close($fh);
}

sub respond {
    my ($client, $status, $body) = @_;
    print $client "HTTP/1.0 $status\r\nContent-Type: text/html; charset=utf-8\r\n"
        . "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
}

sub handle {
    my ($client) = @_;
    my $request = <$client> // '';
    my ($path) = $request =~ m{^GET (\S+)};
    $path //= '';
    if ($path eq '/health') { respond($client, '200 OK', "ok\n"); }
    elsif ($path eq '/') { respond($client, '200 OK', slurp("$root/index.html") // ''); }
    elsif ($path eq '/boots') { respond($client, '200 OK', slurp("$data/boots") // ''); }
    else { respond($client, '404 Not Found', "not found\n"); }
}

record_boot();
$SIG{TERM} = sub { exit 0 };
my $server = IO::Socket::INET->new(
    LocalAddr => $ENV{BIND} || '0.0.0.0', LocalPort => $port, Listen => 16, ReuseAddr => 1, Proto => 'tcp')
    or die "cannot listen on $port: $!\n";
$| = 1;
print "opslab web listening on $port\n";
while (my $client = $server->accept) {
    handle($client);
    close($client);
}
