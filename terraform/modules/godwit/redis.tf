resource "aws_elasticache_subnet_group" "this" {
  count      = local.redis_on ? 1 : 0
  name       = "${local.prefix}-redis"
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

# noeviction: godwit's version guards and tombstones must never be evicted (godwit check warns
# otherwise).
resource "aws_elasticache_parameter_group" "this" {
  count  = local.redis_on ? 1 : 0
  name   = "${local.prefix}-redis"
  family = "redis${split(".", var.redis_engine_version)[0]}"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }

  parameter {
    name  = "cluster-enabled"
    value = local.redis_cluster ? "yes" : "no"
  }

  tags = local.tags
}

resource "aws_elasticache_replication_group" "this" {
  count                = local.redis_on ? 1 : 0
  replication_group_id = "${local.prefix}-redis"
  description          = "godwit ${var.name}: Redis projections"
  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = local.redis_port
  parameter_group_name = aws_elasticache_parameter_group.this[0].name
  subnet_group_name    = aws_elasticache_subnet_group.this[0].name
  security_group_ids   = [aws_security_group.redis[0].id]

  # Cluster mode: shards with replicas; otherwise one primary and its replicas.
  num_node_groups         = local.redis_cluster ? var.redis_num_node_groups : null
  replicas_per_node_group = local.redis_cluster ? var.redis_replicas : null
  num_cache_clusters      = local.redis_cluster ? null : 1 + var.redis_replicas

  automatic_failover_enabled = true
  multi_az_enabled           = true

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth[0].result
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit   = var.redis_snapshot_retention_days
  auto_minor_version_upgrade = true
  apply_immediately          = false
  tags                       = local.tags
}
