# A throwaway certificate authority and a server certificate for 127.0.0.1
# and localhost, made with openssl, for the TLS stack of the benchmarks
# (`cmdop server --tls-cert/--tls-key`; the agent and the clients trust the CA).
#
#   . bench/lib/tls.sh
#   bench_tls_check            # fails with install advice when openssl is missing
#   bench_tls_certs DIR        # sets BENCH_TLS_CA, BENCH_TLS_CERT, BENCH_TLS_KEY

bench_tls_check() {
  command -v openssl >/dev/null 2>&1 && return 0
  echo "openssl is missing (needed for the TLS stack); install it with: apt-get install -y openssl" >&2
  return 1
}

bench_tls_certs() {
  local dir=$1
  mkdir -p "$dir"
  chmod 700 "$dir"
  # ECDSA P-256 keys, valid two days: they live as long as one run.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 -subj "/CN=cmdop bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >/dev/null 2>&1 || { echo "openssl could not make the benchmark CA" >&2; return 1; }
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/key.pem" -out "$dir/server.csr" -subj "/CN=localhost" >/dev/null 2>&1 ||
    { echo "openssl could not make the benchmark server key" >&2; return 1; }
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/cert.pem" -days 2 -extfile "$dir/server.ext" >/dev/null 2>&1 ||
    { echo "openssl could not sign the benchmark server certificate" >&2; return 1; }
  BENCH_TLS_CA=$dir/ca.pem
  BENCH_TLS_CERT=$dir/cert.pem
  BENCH_TLS_KEY=$dir/key.pem
}
