"""The errors of etcd 3.5's JSON gateway, as the fake answers them."""

# gRPC status codes and the HTTP status grpc-gateway v1 maps each to.
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
NOT_FOUND = 5
PERMISSION_DENIED = 7
FAILED_PRECONDITION = 9
OUT_OF_RANGE = 11
UNAVAILABLE = 14
UNAUTHENTICATED = 16

HTTP_STATUS = {
    CANCELLED: 499, UNKNOWN: 500, INVALID_ARGUMENT: 400, NOT_FOUND: 404,
    PERMISSION_DENIED: 403, FAILED_PRECONDITION: 400, OUT_OF_RANGE: 400,
    UNAVAILABLE: 503, UNAUTHENTICATED: 401,
}


class GatewayError(Exception):
    """An error answer: ``{"error": m, "code": N, "message": m}``."""

    def __init__(self, code, message):
        super(GatewayError, self).__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self):
        return HTTP_STATUS.get(self.code, 500)

    def body(self):
        return {'error': self.message, 'code': self.code,
                'message': self.message}


def _etcd(code, text):
    return lambda: GatewayError(code, 'etcdserver: ' + text)


EMPTY_KEY = _etcd(INVALID_ARGUMENT, 'key is not provided')
KEY_NOT_FOUND = _etcd(INVALID_ARGUMENT, 'key not found')
VALUE_PROVIDED = _etcd(INVALID_ARGUMENT, 'value is provided')
LEASE_PROVIDED = _etcd(INVALID_ARGUMENT, 'lease is provided')
DUPLICATE_KEY = _etcd(INVALID_ARGUMENT, 'duplicate key given in txn request')
TOO_MANY_OPS = _etcd(INVALID_ARGUMENT, 'too many operations in txn request')
COMPACTED = _etcd(OUT_OF_RANGE, 'mvcc: required revision has been compacted')
FUTURE_REV = _etcd(OUT_OF_RANGE, 'mvcc: required revision is a future '
                   'revision')
LEASE_NOT_FOUND = _etcd(NOT_FOUND, 'requested lease not found')
LEASE_EXISTS = _etcd(FAILED_PRECONDITION, 'lease already exists')
LEASE_TTL_TOO_LARGE = _etcd(OUT_OF_RANGE, 'too large lease TTL')
AUTH_NOT_ENABLED = _etcd(FAILED_PRECONDITION,
                         'authentication is not enabled')
AUTH_FAILED = _etcd(INVALID_ARGUMENT, 'authentication failed, invalid user '
                    'ID or password')
INVALID_TOKEN = _etcd(UNAUTHENTICATED, 'invalid auth token')
PERMISSION_DENIED_ERR = _etcd(PERMISSION_DENIED, 'permission denied')
USER_EMPTY = _etcd(INVALID_ARGUMENT, 'user name is empty')
USER_EXISTS = _etcd(FAILED_PRECONDITION, 'user name already exists')
USER_NOT_FOUND = _etcd(FAILED_PRECONDITION, 'user name not found')
ROLE_EXISTS = _etcd(FAILED_PRECONDITION, 'role name already exists')
ROLE_NOT_FOUND = _etcd(FAILED_PRECONDITION, 'role name not found')
ROLE_EMPTY = _etcd(INVALID_ARGUMENT, 'role name is empty')
ROLE_NOT_GRANTED = _etcd(FAILED_PRECONDITION,
                         'role is not granted to the user')
PERM_NOT_GRANTED = _etcd(FAILED_PRECONDITION,
                         'permission is not granted to the role')
ROOT_MISSING = _etcd(FAILED_PRECONDITION, 'root user does not exist')
ROOT_NO_ROLE = _etcd(FAILED_PRECONDITION,
                     'root user does not have root role')
NO_LEADER = _etcd(UNAVAILABLE, 'no leader')


def invalid_argument(message):
    """A request the gateway could not decode (no ``etcdserver:``)."""
    return GatewayError(INVALID_ARGUMENT, message)
