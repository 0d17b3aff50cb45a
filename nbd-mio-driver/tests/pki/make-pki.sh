#!/bin/sh
# make-pki.sh DIR: a throw-away PKI for testing nbdd's TLS, made with GnuTLS's
# certtool and psktool (Debian: apt-get install gnutls-bin).
#
# DIR receives the nbdkit/qemu layout, usable as --tls-certificates DIR:
#   ca-cert.pem ca-key.pem                  the test CA
#   server-cert.pem server-key.pem          CN=localhost, SAN localhost + 127.0.0.1
#   client-cert.pem client-key.pem          CN=alice, signed by the CA
# plus, for negative tests:
#   rogue/ca-cert.pem rogue/ca-key.pem      an unrelated CA
#   rogue/client-cert.pem rogue/client-key.pem   CN=mallory, signed by it
#   keys.psk                                psktool file with user alice
# The CA keys are ECDSA P-256 (fast to generate). Server and client keys are
# RSA 2048 with key usage "digital signature, key encipherment": qemu refuses a
# certificate whose (critical) key usage lacks key encipherment, and certtool
# only sets that bit on RSA keys.
# Nothing here is secret: never use these files outside tests.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
for tool in certtool psktool; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$0: $tool not found: apt-get install gnutls-bin" >&2
        exit 1
    fi
done

dir=$1
mkdir -p "$dir/rogue"
cd "$dir"
# certtool chats on stderr; keep it in a log and show it only on failure.
log=$PWD/certtool.log
: > "$log"
trap 'status=$?; [ $status -eq 0 ] || cat "$log" >&2' EXIT

# key FILE [rsa]: a private key, ECDSA P-256 unless "rsa" is given.
key() {
    if [ "${2:-}" = rsa ]; then
        certtool --generate-privkey --key-type=rsa --bits=2048 --no-text --outfile "$1" 2>>"$log"
    else
        certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --no-text --outfile "$1" 2>>"$log"
    fi
    chmod 600 "$1"
}

# ca NAME DIR: a self-signed CA in DIR/ca-{cert,key}.pem.
ca() {
    cat > "$2/ca.info" <<INFO
cn = $1
ca
cert_signing_key
expiration_days = 3650
INFO
    key "$2/ca-key.pem"
    certtool --generate-self-signed --load-privkey "$2/ca-key.pem" \
        --template "$2/ca.info" --no-text --outfile "$2/ca-cert.pem" 2>>"$log"
}

# leaf PREFIX CADIR TEMPLATE: PREFIX-{cert,key}.pem signed by CADIR's CA.
leaf() {
    key "$1-key.pem" rsa
    certtool --generate-certificate --load-privkey "$1-key.pem" \
        --load-ca-certificate "$2/ca-cert.pem" --load-ca-privkey "$2/ca-key.pem" \
        --template "$3" --no-text --outfile "$1-cert.pem" 2>>"$log"
}

ca "nbdd test CA" .
ca "nbdd rogue CA" rogue

cat > server.info <<INFO
organization = nbdd test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
signing_key
encryption_key
expiration_days = 3650
INFO
leaf server . server.info

cat > client.info <<INFO
organization = nbdd test
cn = alice
tls_www_client
signing_key
encryption_key
expiration_days = 3650
INFO
leaf client . client.info

sed 's/^cn = alice$/cn = mallory/' client.info > rogue/client.info
leaf rogue/client rogue rogue/client.info

rm -f keys.psk
psktool -u alice -p keys.psk >/dev/null
chmod 600 keys.psk
