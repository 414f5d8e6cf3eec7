# The database URL, handed to godwit as GODWIT_DATABASE_URL ($${GODWIT_DATABASE_URL} in the
# pipeline file).
resource "aws_secretsmanager_secret" "database_url" {
  #checkov:skip=CKV2_AWS_57:A PostgreSQL password rotation needs a rotation function for the user's database; rotate it there and put the new URL here.
  name                    = "${local.prefix}/database-url"
  description             = "godwit ${var.name}: PostgreSQL URL (GODWIT_DATABASE_URL)"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "database_url" {
  secret_id     = aws_secretsmanager_secret.database_url.id
  secret_string = var.database_url
}

# Redis: the AUTH token, and the URL godwit uses (GODWIT_REDIS_URL), in one JSON secret.
resource "random_password" "redis_auth" {
  count   = local.redis_on ? 1 : 0
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "redis" {
  #checkov:skip=CKV2_AWS_57:Rotating the ElastiCache AUTH token needs a two-step token update (ROTATE then SET) that godwit's running tasks must follow; not automated here.
  count                   = local.redis_on ? 1 : 0
  name                    = "${local.prefix}/redis"
  description             = "godwit ${var.name}: ElastiCache AUTH token and URL (GODWIT_REDIS_URL)"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

locals {
  redis_host = !local.redis_on ? "" : (
    local.redis_cluster
    ? aws_elasticache_replication_group.this[0].configuration_endpoint_address
    : aws_elasticache_replication_group.this[0].primary_endpoint_address
  )
  redis_url = local.redis_on ? "rediss://:${random_password.redis_auth[0].result}@${local.redis_host}:${local.redis_port}" : ""
}

resource "aws_secretsmanager_secret_version" "redis" {
  count     = local.redis_on ? 1 : 0
  secret_id = aws_secretsmanager_secret.redis[0].id
  secret_string = jsonencode({
    auth_token = random_password.redis_auth[0].result
    url        = local.redis_url
  })
}
