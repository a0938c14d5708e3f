# Sourced by compare.sh and profile.sh; needs openssl.
# One CA and one certificate for every member of a test cluster (they all
# listen on 127.0.0.1), usable as server and as client (peers call each
# other with it). ECDSA P-256, which rustls and Go both handle in hardware.
make_certs() { # dir
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$d/ca.key" -out "$d/ca.crt" -days 2 -subj "/CN=phxkv bench CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$d/node.key" -out "$d/node.csr" -subj "/CN=phxkv bench member" 2>/dev/null
    printf '%s\n' basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature \
        extendedKeyUsage=serverAuth,clientAuth subjectAltName=IP:127.0.0.1,DNS:localhost \
        >"$d/node.ext"
    openssl x509 -req -in "$d/node.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/node.ext" -out "$d/node.crt" 2>/dev/null
    openssl verify -CAfile "$d/ca.crt" "$d/node.crt" >/dev/null ||
        { printf '%s: the test certificates do not verify\n' "${0##*/}" >&2; exit 1; }
}
