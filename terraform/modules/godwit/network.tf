# godwit only opens connections: no ingress. Egress: PostgreSQL, Redis (the replication
# group's own security group) and HTTPS to S3, SNS and Secrets Manager.
resource "aws_security_group" "godwit" {
  name        = "${local.prefix}-godwit"
  description = "godwit ${var.name}: egress to PostgreSQL, Redis and HTTPS (S3, SNS, Secrets Manager)"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "postgres" {
  for_each          = toset(var.database_cidr_blocks)
  security_group_id = aws_security_group.godwit.id
  description       = "PostgreSQL source"
  ip_protocol       = "tcp"
  from_port         = var.database_port
  to_port           = var.database_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = toset(var.https_egress_cidr_blocks)
  security_group_id = aws_security_group.godwit.id
  description       = "HTTPS: S3, SNS, Secrets Manager, ECR, CloudWatch Logs"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "s3_endpoint" {
  count             = var.s3_prefix_list_id == null ? 0 : 1
  security_group_id = aws_security_group.godwit.id
  description       = "HTTPS to the S3 gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = var.s3_prefix_list_id
}

resource "aws_vpc_security_group_egress_rule" "redis" {
  count                        = local.redis_on ? 1 : 0
  security_group_id            = aws_security_group.godwit.id
  description                  = "Redis (ElastiCache, TLS)"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.redis[0].id
}

# Redis accepts connections from godwit only.
resource "aws_security_group" "redis" {
  count       = local.redis_on ? 1 : 0
  name        = "${local.prefix}-redis"
  description = "godwit ${var.name}: Redis, reachable from godwit only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_godwit" {
  count                        = local.redis_on ? 1 : 0
  security_group_id            = aws_security_group.redis[0].id
  description                  = "Redis from godwit"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.godwit.id
}
